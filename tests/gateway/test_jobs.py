"""Background jobs through a real mesh and a real worker process: lifecycle, events, resumption, cancellation,
dead-lettering and limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import orjson
import pytest
import redis
from aiohttp import web

from tests.gateway.conftest import NewKey, gateway_log_after, gateway_log_size, unique_question, wait_events
from weir import webhooks
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh, add_gateway
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from weir.kit.redis_local import LocalRedis

FINAL_EVENTS = {"done", "failed", "cancelled", "dead_letter"}


def sse(r: httpx.Response) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each SSE event of a response."""
    ev_id = ev_type = ""
    for line in r.iter_lines():
        if line.startswith("id: "):
            ev_id = line[4:]
        elif line.startswith("event: "):
            ev_type = line[7:]
        elif line.startswith("data: "):
            yield ev_id, ev_type, orjson.loads(line[6:])


def submit(mesh: Mesh, key: str, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "fake-small")
    body.setdefault("messages", unique_question("Job"))
    body.setdefault("max_tokens", 16)
    r = httpx.post(f"{mesh.base_url}/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    doc: dict[str, Any] = r.json()
    assert doc["status"] == "queued" and doc["id"].startswith("job_")
    assert r.headers["location"] == f"/v1/jobs/{doc['id']}"
    return doc


def events(mesh: Mesh, key: str, job_id: str, after: str = "",
           stop_after: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    """The job's events (from after `after`) until the final one, or until the first `stop_after` event."""
    headers = {"Authorization": f"Bearer {key}", **({"Last-Event-ID": after} if after else {})}
    out = []
    with httpx.stream("GET", f"{mesh.base_url}/jobs/{job_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for ev in sse(r):
            out.append(ev)
            if ev[1] == stop_after:
                break  # drops the connection mid-stream
    return out


def wait_job(mesh: Mesh, key: str, job_id: str, status: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        doc: dict[str, Any] = httpx.get(f"{mesh.base_url}/jobs/{job_id}",
                                        headers={"Authorization": f"Bearer {key}"}).json()
        if doc["status"] in ("succeeded", "failed", "cancelled", "dead_letter") and doc.get(
                "webhook", {}).get("status") not in ("pending", "retrying"):
            assert status is None or doc["status"] == status, doc
            return doc
        assert time.monotonic() < deadline, f"job still {doc['status']}"
        time.sleep(0.05)


def test_job_lifecycle_events_in_order_and_ledger(mesh: Mesh, new_key: NewKey, admin: httpx.Client) -> None:
    key, view = new_key()
    job = submit(mesh, key, metadata={"ticket": "42"})
    log = events(mesh, key, job["id"])
    types = [t for _, t, _ in log]
    assert types[:4] == ["queued", "started", "cache", "route"], types
    assert types[-2:] == ["usage", "done"], types
    assert "delta" in types and types.index("delta") > types.index("route")
    assert all(t in ("delta", "attempt", "reasoning") for t in types[4:-2]), types
    ids = [i for i, _, _ in log]
    assert len(set(ids)) == len(ids) and ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    cache = log[2][2]
    assert cache["tier"] == "miss" and cache["reason"]
    assert log[3][2]["model"] == "fake-small" and log[3][2]["reason"]
    text = "".join(d["text"] for _, t, d in log if t == "delta")

    doc = wait_job(mesh, key, job["id"], "succeeded")
    result = doc["result"]
    assert result["content"] == text and text.startswith("[fake-small:")
    assert result["usage"]["completion_tokens"] > 0 and result["cost_usd"] > 0
    assert doc["attempts"] == 1 and doc["metadata"] == {"ticket": "42"}
    assert {"queued_ms", "run_ms", "total_ms"} <= set(doc["timings"])
    assert doc["error"] is None
    # The run went through the ledger like a synchronous request, under the job's id and the submitting key.
    ledger = wait_events(admin, 1, key=view["id"])
    assert [e["id"] for e in ledger] == [job["id"]]
    assert ledger[0]["status"] == "ok" and ledger[0]["completion_tokens"] == result["usage"]["completion_tokens"]


def test_events_resume_after_a_dropped_connection(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    job = submit(mesh, key, max_tokens=64)
    first = events(mesh, key, job["id"], stop_after="delta")
    assert first[-1][1] == "delta"
    rest = events(mesh, key, job["id"], after=first[-1][0])
    whole = events(mesh, key, job["id"])
    assert [e[0] for e in first + rest] == [e[0] for e in whole]  # nothing lost, nothing repeated
    assert whole[-1][1] == "done"
    # `?after=` works too (for clients that cannot set headers)
    r = httpx.get(f"{mesh.base_url}/jobs/{job['id']}/events", params={"after": whole[-2][0]},
                  headers={"Authorization": f"Bearer {key}"})
    assert [t for _, t, _ in sse(r)] == ["done"]


def test_a_listener_that_leaves_is_not_an_error_and_a_bad_event_id_is_400(mesh: Mesh, new_key: NewKey) -> None:
    """Found by fuzzing: a client closing its event stream logged an unhandled error; "١-١" (Arabic-Indic digits)
    passed the event-id check."""
    key, _ = new_key()
    offset = gateway_log_size(mesh)
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:100", "count": 1, "model": "fake-small"})
    job = submit(mesh, key, max_tokens=32)
    assert events(mesh, key, job["id"], stop_after="delta")[-1][1] == "delta"
    text = gateway_log_after(mesh, offset, "client disconnected from job events")
    assert "client disconnected from job events" in text
    assert '"level":"error"' not in text, text
    assert wait_job(mesh, key, job["id"], "succeeded")["status"] == "succeeded"  # the job went on
    for after in ("\u0661-\u0661", "1-1\n"):
        r = httpx.get(f"{mesh.base_url}/jobs/{job['id']}/events", params={"after": after},
                      headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID", (after, r.text)


def test_cancel_stops_a_running_job(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:100", "count": 1, "model": "fake-small"})
    job = submit(mesh, key, max_tokens=64)
    seen = events(mesh, key, job["id"], stop_after="delta")
    assert seen[-1][1] == "delta"
    r = httpx.delete(f"{mesh.base_url}/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["cancel_requested"]
    doc = wait_job(mesh, key, job["id"], "cancelled")
    assert doc["result"] is None
    log = events(mesh, key, job["id"])
    assert log[-1][1] == "cancelled" and "done" not in [t for _, t, _ in log]
    deltas = [t for _, t, _ in log if t == "delta"]
    assert len(deltas) < 40  # the stream was cut, not run to its end (64 tokens at 100 ms each)


def test_a_run_that_loses_the_completion_is_charged_as_superseded(mesh: Mesh, new_key: NewKey,
                                                                    admin: httpx.Client,
                                                                    redis_server: LocalRedis) -> None:
    """A run reclaimed while still alive (a worker stalled past the visibility timeout) runs twice; the run that
    does not complete the job (cut when it notices, as here, or finishing second) still spent its tokens, so it
    is charged, as "superseded", never as a second "ok" (the 1,000-job chaos test meets the second case)."""
    key, view = new_key()
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:50", "count": 1, "model": "fake-small"})
    job = submit(mesh, key, max_tokens=12)
    seen = events(mesh, key, job["id"], stop_after="delta")
    assert seen[-1][1] == "delta"
    # Another run completes the job first (what the completion script does for the winner of the race).
    r = redis.Redis.from_url(redis_server.url)
    try:
        assert r.hset(f"weir:job:{job['id']}", "status", "succeeded") == 0
    finally:
        r.close()
    ledger = wait_events(admin, 1, key=view["id"])
    assert [(e["id"], e["status"]) for e in ledger] == [(job["id"], "superseded")]
    assert ledger[0]["completion_tokens"] > 0 and ledger[0]["cost_usd"] > 0
    time.sleep(0.3)  # nothing else arrives for it: no "ok" after the fact
    assert len(wait_events(admin, 1, key=view["id"])) == 1


def test_cancelled_queued_job_never_runs(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    # Fill the worker (16 at a time) with slow jobs so the last one waits in the queue.
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "slow_first_token:1500", "count": 16,
                                                      "model": "fake-small"})
    blockers = [submit(mesh, key) for _ in range(16)]
    job = submit(mesh, key)
    r = httpx.delete(f"{mesh.base_url}/jobs/{job['id']}", headers=auth)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    log = events(mesh, key, job["id"])
    assert [t for _, t, _ in log] == ["queued", "cancelled"]
    for b in blockers:
        wait_job(mesh, key, b["id"], "succeeded")
    assert wait_job(mesh, key, job["id"], "cancelled")["attempts"] == 0
    # Cancelling a finished job is refused.
    r = httpx.delete(f"{mesh.base_url}/jobs/{blockers[0]['id']}", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


def test_job_dead_lettered_after_bounded_retries(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "503", "count": -1, "model": "fake-large"})
    try:
        job = submit(mesh, key, model="fake-large")
        doc = wait_job(mesh, key, job["id"], "dead_letter")
    finally:
        httpx.post(f"{mesh.fake_url}/_fake/reset")
    assert doc["attempts"] == 2  # WEIR_JOBS_MAX_ATTEMPTS in the test mesh
    assert doc["error"]["code"] == "max_attempts_exceeded"
    log = events(mesh, key, job["id"])
    types = [t for _, t, _ in log]
    assert types.count("started") == 2 and types.count("retry") == 1 and types[-1] == "dead_letter"
    # Each run's failed provider calls are events too (before the retry, and before the dead letter).
    first_run = [d for _, t, d in log[:types.index("retry")] if t == "attempt"]
    assert first_run and all(a["model"] == "fake-large" and a["http_status"] == 503 for a in first_run)
    assert "attempt" in types[types.index("retry"):]


def test_limits_and_ownership_apply_to_jobs(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key(rpm=1)
    first, second = submit(mesh, key), submit(mesh, key)
    docs = [wait_job(mesh, key, first["id"]), wait_job(mesh, key, second["id"])]
    assert sorted(d["status"] for d in docs) == ["failed", "succeeded"]
    failed = next(d for d in docs if d["status"] == "failed")
    assert failed["error"]["status"] == 429 and failed["error"]["code"] == "rate_limit_exceeded"
    other, _ = new_key()
    r = httpx.get(f"{mesh.base_url}/jobs/{first['id']}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404
    limited, _ = new_key(models=["fake-large"])
    job = submit(mesh, limited, model="fake-small")
    assert wait_job(mesh, limited, job["id"], "failed")["error"]["code"] == "model_not_allowed"


def test_bad_job_requests_are_refused(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{mesh.base_url}/jobs", json={"model": "fake-small", "messages": unique_question(),
                                                  "webhook_url": "ftp://x"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
    r = httpx.post(f"{mesh.base_url}/jobs", json={"model": "fake-small", "messages": []}, headers=auth)
    assert r.status_code == 400
    assert httpx.post(f"{mesh.base_url}/jobs", json={}).status_code == 401
    assert httpx.get(f"{mesh.base_url}/jobs/job_nope", headers=auth).status_code == 404


async def test_jobs_over_grpc(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    md = (("authorization", f"Bearer {key}"),)
    req = types_pb2.ChatRequest(model="fake-small", messages=[types_pb2.ChatMessage(
        role="user", content=f"gRPC job {uuid.uuid4()}")])
    req.sampling.max_tokens = 16
    async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        sub = await stub.SubmitJob(pb.SubmitJobRequest(request=req, metadata={"via": "grpc"}), metadata=md)
        watched = [r.event async for r in stub.WatchJob(pb.WatchJobRequest(id=sub.id), metadata=md)]
        types = [e.type for e in watched]
        assert types[:2] == ["queued", "started"] and types[-1] == "done"
        resumed = [r.event async for r in stub.WatchJob(
            pb.WatchJobRequest(id=sub.id, after_event_id=watched[-3].id), metadata=md)]
        assert [e.id for e in resumed] == [e.id for e in watched[-2:]]
        got = (await stub.GetJob(pb.GetJobRequest(id=sub.id), metadata=md)).job
        assert got.status == pb.JOB_STATUS_SUCCEEDED and got.metadata["via"] == "grpc"
        text = "".join(orjson.loads(e.data_json)["text"] for e in watched if e.type == "delta")
        assert got.result.content == text and got.result.usage.completion_tokens > 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CancelJob(pb.CancelJobRequest(id=sub.id), metadata=md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetJob(pb.GetJobRequest(id=sub.id), metadata=(("authorization", f"Bearer {new_key()[0]}"),))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_webhook_is_signed_and_retried(mesh: Mesh, new_key: NewKey) -> None:
    key, view = new_key()
    secret = view["webhook_secret"]
    received: list[tuple[str, bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get(webhooks.HEADER, ""), await request.read(),
                         request.headers.get("X-Weir-Delivery-Attempt", "")))
        return web.Response(status=500 if len(received) <= 2 else 200)  # fails twice, then accepts

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(base_url=mesh.base_url, headers={"Authorization": f"Bearer {key}"}) as c:
            r = await c.post("/jobs", json={"model": "fake-small", "messages": unique_question("Hook"),
                                            "max_tokens": 8, "webhook_url": f"http://127.0.0.1:{port}/hook"})
            assert r.status_code == 202
            job_id = r.json()["id"]
            for _ in range(300):
                doc = (await c.get(f"/jobs/{job_id}")).json()
                if doc["webhook"]["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    assert doc["webhook"]["status"] == "delivered" and doc["webhook"]["attempts"] == 3
    assert [a for _, _, a in received] == ["1", "2", "3"]
    header, body, _ = received[-1]
    t = webhooks.verify(secret, header, body, tolerance_s=300)
    assert abs(t - time.time()) < 300
    payload = orjson.loads(body)
    assert payload["type"] == "job.finished" and payload["job"]["id"] == job_id
    assert payload["job"]["status"] == "succeeded" and payload["job"]["result"]["content"]
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify(secret, header, body.replace(b"succeeded", b"failed"))  # tampered body
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify("whsec_wrong", header, body)
    with pytest.raises(webhooks.SignatureError, match="replay"):
        webhooks.verify(secret, header, body, tolerance_s=300, now=t + 301)  # an old delivery replayed
    old = webhooks.sign(secret, body, int(time.time()) - 3600)
    with pytest.raises(webhooks.SignatureError, match="replay"):
        webhooks.verify(secret, old, body)
    with pytest.raises(webhooks.SignatureError, match="malformed"):
        webhooks.verify(secret, "v1=abc", body)


def test_failed_provider_attempts_and_fallback_are_events(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    # fake-small fails its first try and both retries (WEIR_REASONER_MAX_RETRIES=2): the reasoner falls back.
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "503", "count": 3, "model": "fake-small"})
    job = submit(mesh, key)
    log = events(mesh, key, job["id"])
    types = [t for _, t, _ in log]
    attempts = [d for _, t, d in log if t == "attempt"]
    assert [(a["model"], a["http_status"], a["outcome"]) for a in attempts[:3]] == [
        ("fake-small", 503, "server_error")] * 3, log
    assert types.index("route") < types.index("attempt") < types.index("fallback") < types.index("delta")
    assert log[types.index("fallback")][2] == {"type": "fallback", "from": "fake-small", "model": "fake-large"}
    assert types[-1] == "done" and log[-1][2]["result"]["model"] == "fake-large"


async def test_webhook_for_a_job_cancelled_while_queued(mesh: Mesh, new_key: NewKey) -> None:
    key, view = new_key()
    received: list[bytes] = []
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        webhooks.verify(view["webhook_secret"], request.headers[webhooks.HEADER], body)
        received.append(body)
        got.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(base_url=mesh.base_url, headers={"Authorization": f"Bearer {key}"}) as c:
            await c.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "slow_first_token:1500", "count": 16,
                                                                "model": "fake-small"})
            for _ in range(16):  # keep the worker busy so the next job waits in the queue
                await c.post("/jobs", json={"model": "fake-small", "messages": unique_question(), "max_tokens": 4})
            r = await c.post("/jobs", json={"model": "fake-small", "messages": unique_question(), "max_tokens": 4,
                                            "webhook_url": f"http://127.0.0.1:{port}/hook"})
            job_id = r.json()["id"]
            assert (await c.delete(f"/jobs/{job_id}")).json()["status"] == "cancelled"
            await asyncio.wait_for(got.wait(), 30)
    finally:
        await runner.cleanup()
    payload = orjson.loads(received[0])
    assert payload["job"]["id"] == job_id and payload["job"]["status"] == "cancelled"
    assert payload["job"]["attempts"] == 0


def test_preview_shows_a_refused_near_neighbour_first(mesh: Mesh, new_key: NewKey, admin: httpx.Client) -> None:
    key, view = new_key()  # a fresh team: its own cache entries
    auth = {"Authorization": f"Bearer {key}"}
    first = [{"role": "user", "content": "How many kilometers are 15 miles?"}]
    body = {"model": "fake-small", "messages": first, "temperature": 0, "max_tokens": 16}
    stored = httpx.post(f"{mesh.base_url}/chat/completions", json=body, headers=auth).json()
    for _ in range(100):  # stored in the background
        r = httpx.post(f"{mesh.base_url}/chat/completions", json=body, headers=auth)
        if r.headers["x-weir-cache"] == "exact":
            break
        time.sleep(0.05)
    near = [{"role": "user", "content": "How many kilometers are 16 miles?"}]
    job = submit(mesh, key, messages=near, temperature=0, preview=True)
    log = events(mesh, key, job["id"])
    types = [t for _, t, _ in log]
    assert types.index("cache") < types.index("preview") < types.index("delta"), types
    cache, preview = log[types.index("cache")][2], log[types.index("preview")][2]
    assert cache["tier"] == "miss" and cache["reason"].startswith("refused:")
    assert preview["provisional"] is True and preview["content"] == stored["choices"][0]["message"]["content"]
    done = log[-1][2]["result"]
    assert done["content"] != preview["content"] and done["cache"] == "miss"  # replaced by the real answer
    # Without asking, no preview; a key can ask for all its jobs.
    plain = submit(mesh, key, messages=[{"role": "user", "content": "How many kilometers are 17 miles?"}],
                   temperature=0)
    assert "preview" not in [t for _, t, _ in events(mesh, key, plain["id"])]
    assert admin.patch(f"/v1/admin/keys/{view['id']}", json={"preview": True}).json()["preview"] is True
    keyed = submit(mesh, key, messages=[{"role": "user", "content": "How many kilometers are 18 miles?"}],
                   temperature=0)
    assert "preview" in [t for _, t, _ in events(mesh, key, keyed["id"])]


def test_a_gateway_can_run_a_worker_too(mesh: Mesh, new_key: NewKey) -> None:
    gateway = mesh.procs.get("gateway-jobs") or add_gateway(mesh, "gateway-jobs", {"WEIR_JOBS_IN_GATEWAY": "1"})
    key, _ = new_key()
    base = f"http://{gateway.http}/v1"
    jobs = []
    for _ in range(12):
        r = httpx.post(f"{base}/jobs", json={"model": "fake-small", "messages": unique_question(), "max_tokens": 4},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202
        jobs.append(r.json()["id"])
    pids = set()
    for job_id in jobs:
        log = events(mesh, key, job_id)
        assert log[-1][1] == "done"
        pids.add(int(next(d for _, t, d in log if t == "started")["worker"].split("-")[-2]))
    assert gateway.popen.pid in pids  # the gateway's own worker took some (the mesh's worker the others)
