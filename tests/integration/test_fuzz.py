"""Integration: seeded fuzzing of every surface a client can reach, against a real mesh of its own.

Each case is a valid request with one to three things changed: a field dropped, retyped or set to an extreme
(huge integers, NaN, non-ASCII digits, control characters, 5,000-character strings, wrong JSON types), a body cut
short, an odd header. The test fails on any answer a client must never get:

- from the REST bridge: a 5xx, or an error body that is not OpenAI's `{"error": {"message", "type", ...}}`;
- from any gRPC service (the gateway's public API and the internal ones): UNKNOWN or INTERNAL (an unhandled
  exception), or DEADLINE_EXCEEDED (a hang);
- a process of the mesh that died, or an error-level line in any service's log.

It runs on a mesh and a Redis of its own, because fuzzed calls report outcomes to the router and open breakers
that other tests must not inherit. `WEIR_FUZZ_CASES` (cases per surface, default 250) and `WEIR_FUZZ_SEED` scale
and vary it: `make fuzz` runs many more. Each failure prints the request, so a seed and a case reproduce it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from tests.fuzzing import ODD, Fuzzer
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh, start_mesh
from weir.embedder.v1 import embedder_service_pb2 as embedder_pb
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb
from weir.kit.mux import MuxChannel
from weir.kit.redis_local import start_local_redis
from weir.reasoner.v1 import reasoner_service_pb2 as reasoner_pb
from weir.router.v1 import router_service_pb2 as router_pb

pytestmark = pytest.mark.integration

CASES = int(os.environ.get("WEIR_FUZZ_CASES", "250"))
SEED = int(os.environ.get("WEIR_FUZZ_SEED", "20261206"))

@pytest.fixture(scope="module")
def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory, model_dir: object) -> Iterator[Mesh]:
    state = tmp_path_factory.mktemp("fuzz")
    redis = start_local_redis(state / "redis")
    mesh = start_mesh(state / "mesh", redis.url, {"WEIR_METRICS_PORT": "0", "WEIR_WEBHOOK_BACKOFF_MS": "50"})
    yield mesh
    try:
        dead = {n: p.popen.poll() for n, p in mesh.procs.items() if p.popen.poll() is not None}
        assert not dead, f"processes died during fuzzing: {dead}"
        errors = [line for p in mesh.procs.values() if p.log_path
                  for line in Path(p.log_path).read_text(errors="replace").splitlines() if '"level":"error"' in line]
        assert not errors, "\n".join(errors[:5])
    finally:
        mesh.stop()
        redis.stop()


def _chat_body(rnd: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": rnd.choice(["auto", "fake-small", "fake-large"]),
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": rnd.choice([f"what is {rnd.randrange(99)} plus 1?",
                                                             [{"type": "text", "text": "hi there"}]])}],
        "temperature": rnd.choice([0, 0.7]), "stream": rnd.random() < 0.3, "max_tokens": 16}
    if rnd.random() < 0.2:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    if rnd.random() < 0.2:
        body["messages"] += [{"role": "assistant", "content": None, "tool_calls": [
                                 {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                             {"role": "tool", "tool_call_id": "c1", "content": "42"},
                             {"role": "user", "content": "and?"}]
    return body


def _dump(doc: Any) -> bytes:
    """JSON as a client might send it: integers past 64 bits and NaN included (orjson refuses both)."""
    return json.dumps(doc).encode()


def _bad_rest_answer(status: int, body: bytes) -> str | None:
    if status >= 500:
        return f"status {status}"
    if status >= 400:
        try:
            err = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return "an error body that is not JSON"
        if not isinstance(err, dict) or not isinstance(err.get("message"), str) or "type" not in err:
            return "an error not in OpenAI's shape"
    return None


def test_rest_bridge_answers_every_mutated_request_with_a_200_or_a_4xx(fuzz_mesh: Mesh) -> None:
    fz = Fuzzer(SEED)
    rnd = fz.rnd
    admin = httpx.Client(base_url=fuzz_mesh.http, timeout=30,
                         headers={"Authorization": f"Bearer {fuzz_mesh.master_key}"})
    key = admin.post("/v1/admin/keys", json={"team": "fuzz"}).json()["key"]
    user = httpx.Client(base_url=fuzz_mesh.http, timeout=30, headers={"Authorization": f"Bearer {key}"})
    other = admin.post("/v1/admin/keys", json={"team": "fuzz-other"}).json()["id"]
    jobs: list[str] = []
    failures: list[str] = []
    statuses: dict[int, int] = {}

    def send(method: str, path: str, client: httpx.Client = user, **kw: Any) -> None:
        with client.stream(method, path, **kw) as r:
            body = b""
            for chunk in r.iter_bytes():  # an event stream is read until its first bytes, then left
                body += chunk
                if r.headers.get("content-type", "").startswith("text/event-stream"):
                    break
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if (problem := _bad_rest_answer(r.status_code, body)) is not None:
                failures.append(f"{problem}: {method} {path} {kw!r:.600} -> {body[:300]!r}")

    for _ in range(CASES):
        kind = rnd.random()
        if kind < 0.55:
            body = _chat_body(rnd)
            for _ in range(rnd.randrange(0, 3)):
                body = fz.json(body)
            raw = _dump(body) if rnd.random() < 0.9 else _dump(body)[: rnd.randrange(0, 60)]
            send("POST", "/v1/chat/completions", content=raw, headers={
                b"Content-Type": rnd.choice([b"application/json"] * 4 + [b"text/plain"]), **fz.headers()})
        elif kind < 0.65:
            body = fz.json({**_chat_body(rnd), "metadata": {"a": "b"}, "preview": False, "stream": False})
            with user.stream("POST", "/v1/jobs", content=_dump(body), headers=fz.headers()) as r:
                r.read()
                if r.status_code == 202:
                    jobs.append(r.json()["id"])
                elif (problem := _bad_rest_answer(r.status_code, r.content)) is not None:
                    failures.append(f"{problem}: POST /v1/jobs {body!r:.600} -> {r.text[:300]}")
        elif kind < 0.72 and jobs:
            job = rnd.choice(jobs)
            path = rnd.choice([f"/v1/jobs/{job}", f"/v1/jobs/{job}/events", f"/v1/jobs/{job}x"])
            send(rnd.choice(["GET", "GET", "DELETE"]) if not path.endswith("events") else "GET", path,
                 headers=fz.headers(), timeout=10)
        elif kind < 0.8:
            body = fz.json({"team": "fuzz-k", "name": "k", "models": ["auto"], "rpm": 100, "tpm": 100000,
                            "budget_usd": 5, "period": "month", "preview": False})
            op = rnd.random()
            if op < 0.5:
                send("POST", "/v1/admin/keys", admin, content=_dump(body))
            elif op < 0.8 and isinstance(body, dict):
                body.pop("team", None)
                send("PATCH", f"/v1/admin/keys/{rnd.choice([other, 'nope', 'x' * 300])}", admin,
                     content=_dump(body))
            else:
                send("POST", f"/v1/admin/keys/{other}/rotate", admin, content=_dump(fz.json({"grace_s": 5})))
        elif kind < 0.86:
            send("PUT", f"/v1/admin/teams/{rnd.choice(['fuzz-t', 'x' * 100, '%25', 'a..b', 'é'])}", admin,
                 content=_dump(fz.json({"rpm": 1000, "tpm": 100000, "budget_usd": 1, "period": "day"})))
        elif kind < 0.9:
            body = fz.json(rnd.choice([{"team": "fuzz", "all": True}, {"team": "fuzz", "model": "auto"},
                                       {"team": "fuzz", "entry_id": "x"}]))
            send("POST", "/v1/admin/cache/invalidate", rnd.choice([admin, user]), content=_dump(body))
        else:
            path = rnd.choice(["/v1/usage", "/v1/usage/events", "/v1/jobs/stats", "/v1/admin/keys", "/v1/models",
                               "/v1/admin/cache/stats", "/v1/admin/teams/fuzz", "/v1/admin/keys/nope", "/nope"])
            params = {rnd.choice(["limit", "start", "end", "key", "team", "model", "group_by"]):
                      str(rnd.choice(ODD))[:100] for _ in range(rnd.randrange(0, 3))}
            send("GET", path, rnd.choice([admin, user]), params=params)
    assert not failures, f"{len(failures)} bad answers (statuses {statuses}):\n" + "\n".join(failures[:10])
    assert statuses.get(200, 0) > CASES // 10, statuses  # the fuzzer also reached the paths that answer


def _grpc_cases(emb: types_pb2.Embedding, plan: list[types_pb2.RouteTarget], job_id: str) -> dict[
        tuple[str, str], Callable[[], Message]]:
    """A valid request for every RPC a client or another service calls, by (service, method path)."""

    def chat() -> types_pb2.ChatRequest:
        return types_pb2.ChatRequest(
            model="fake-small", sampling=types_pb2.SamplingParams(temperature=0.0, max_tokens=16),
            messages=[types_pb2.ChatMessage(role="system", content="brief"),
                      types_pb2.ChatMessage(role="user", content=f"what is 1 plus {uuid.uuid4().hex[:6]}?")])

    answer = cache_pb.CachedAnswer(content="2", model="fake-small")
    return {
        ("embedder", "/weir.embedder.v1.EmbedderService/Embed"): lambda: embedder_pb.EmbedRequest(text="hello there"),
        ("embedder", "/weir.embedder.v1.EmbedderService/EmbedBatch"): lambda: embedder_pb.EmbedBatchRequest(
            texts=["a b", "c d"]),
        ("embedder", "/weir.embedder.v1.EmbedderService/ScorePairs"): lambda: embedder_pb.ScorePairsRequest(
            pairs=[embedder_pb.TextPair(a="how old is he", b="what age is he")]),
        ("cache", "/weir.cache.v1.CacheService/LookupExact"): lambda: cache_pb.LookupExactRequest(
            tenant="t", request=chat()),
        ("cache", "/weir.cache.v1.CacheService/LookupSemantic"): lambda: cache_pb.LookupSemanticRequest(
            tenant="t", request=chat(), embedding=emb),
        ("cache", "/weir.cache.v1.CacheService/Store"): lambda: cache_pb.StoreRequest(
            tenant="t", request=chat(), embedding=emb, answer=answer, ttl_seconds=60),
        ("cache", "/weir.cache.v1.CacheService/Invalidate"): lambda: cache_pb.InvalidateRequest(tenant="t", all=True),
        ("cache", "/weir.cache.v1.CacheService/GetStats"): lambda: cache_pb.GetStatsRequest(tenant="t"),
        ("router", "/weir.router.v1.RouterService/Route"): lambda: router_pb.RouteRequest(
            requested_model="auto", embedding=emb, prompt_tokens=10, max_tokens=16, tenant="t"),
        ("router", "/weir.router.v1.RouterService/ReportOutcome"): lambda: router_pb.ReportOutcomeRequest(
            target=plan[0], success=True, latency_ms=5),
        ("reasoner", "/weir.reasoner.v1.ReasonerService/Complete"): lambda: reasoner_pb.CompleteRequest(
            request=chat(), plan=plan, tenant="t"),
        ("reasoner", "/weir.reasoner.v1.ReasonerService/StreamComplete"): lambda: reasoner_pb.StreamCompleteRequest(
            request=chat(), plan=plan, tenant="t"),
        ("gateway", "/weir.gateway.v1.GatewayService/CreateChatCompletion"):
            lambda: gateway_pb.CreateChatCompletionRequest(request=chat()),
        ("gateway", "/weir.gateway.v1.GatewayService/StreamChatCompletion"):
            lambda: gateway_pb.StreamChatCompletionRequest(request=chat()),
        ("gateway", "/weir.gateway.v1.GatewayService/SubmitJob"): lambda: gateway_pb.SubmitJobRequest(request=chat()),
        ("gateway", "/weir.gateway.v1.GatewayService/GetJob"): lambda: gateway_pb.GetJobRequest(id=job_id),
        ("gateway", "/weir.gateway.v1.GatewayService/WatchJob"): lambda: gateway_pb.WatchJobRequest(id=job_id),
        ("gateway", "/weir.gateway.v1.GatewayService/CancelJob"): lambda: gateway_pb.CancelJobRequest(id=job_id),
    }


_MODULES = {"embedder": embedder_pb, "cache": cache_pb, "router": router_pb, "reasoner": reasoner_pb,
            "gateway": gateway_pb}
_NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


async def test_grpc_services_answer_every_mutated_request_with_a_status_that_names_it(fuzz_mesh: Mesh) -> None:
    fz = Fuzzer(SEED + 1)
    md = (("authorization", f"Bearer {fuzz_mesh.master_key}"),)
    channels = {name: grpc.aio.insecure_channel(fuzz_mesh.procs[name].grpc) for name in _MODULES}
    # The internal services also take every call as a message on their multiplexed stream (weir.kit.mux).
    muxes = {name: MuxChannel(fuzz_mesh.procs[name].grpc) for name in _MODULES if name != "gateway"}
    rnd = random.Random(SEED + 2)
    try:
        embedder = channels["embedder"]
        emb = (await embedder.unary_unary("/weir.embedder.v1.EmbedderService/Embed",
                                          embedder_pb.EmbedRequest.SerializeToString,
                                          embedder_pb.EmbedResponse.FromString)(
            embedder_pb.EmbedRequest(text="what is 1 plus 1?"))).embedding
        routed = await channels["router"].unary_unary(
            "/weir.router.v1.RouterService/Route", router_pb.RouteRequest.SerializeToString,
            router_pb.RouteResponse.FromString)(router_pb.RouteRequest(
                requested_model="fake-small", embedding=emb, prompt_tokens=10, max_tokens=16, tenant="t"))
        job = await channels["gateway"].unary_unary(
            "/weir.gateway.v1.GatewayService/SubmitJob", gateway_pb.SubmitJobRequest.SerializeToString,
            gateway_pb.SubmitJobResponse.FromString)(gateway_pb.SubmitJobRequest(request=types_pb2.ChatRequest(
                model="fake-small", messages=[types_pb2.ChatMessage(role="user", content="a job")])), metadata=md)
        failures: list[str] = []
        codes: dict[str, int] = {}
        cases = _grpc_cases(emb, list(routed.plan), job.id)
        per_method = max(1, CASES // 5)
        for (service, path), make in cases.items():
            _, svc_name, method = path.split("/")
            meth = _MODULES[service].DESCRIPTOR.services_by_name[svc_name.rsplit(".", 1)[1]].methods_by_name[method]
            out = message_factory.GetMessageClass(meth.output_type)
            for i in range(per_method):
                request = make() if i == 0 else fz.proto(make())
                try:
                    if meth.server_streaming:
                        call = channels[service].unary_stream(path, type(request).SerializeToString, out.FromString)
                        async for _ in call(request, timeout=15, metadata=md):
                            pass
                    else:
                        await channels[service].unary_unary(path, type(request).SerializeToString, out.FromString)(
                            request, timeout=15, metadata=md)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details()
                    # the unchanged request must be served (a finished job may refuse its cancellation)
                    if code in _NEVER or (i == 0 and code != grpc.StatusCode.FAILED_PRECONDITION):
                        failures.append(f"{path} {code.name}: {details:.200} for {request!s:.600}")
                codes[code.name] = codes.get(code.name, 0) + 1
                if service in muxes and not meth.server_streaming:
                    # the same request on the stream, then bytes that may not parse at all
                    for garbage, payload in enumerate((request.SerializeToString(), rnd.randbytes(rnd.randint(1, 64)))):
                        try:
                            await muxes[service].call(path, payload, 15)
                        except grpc.aio.AioRpcError as exc:
                            if exc.code() in _NEVER or (i == 0 and not garbage
                                                        and exc.code() != grpc.StatusCode.FAILED_PRECONDITION):
                                failures.append(f"mux {path} {exc.code().name}: {exc.details():.200} for "
                                                f"{payload!r:.300}")
        assert not failures, f"{len(failures)} bad answers ({codes}):\n" + "\n".join(failures[:10])
        assert codes.get("OK", 0) > len(cases) and codes.get("INVALID_ARGUMENT", 0) > len(cases), codes
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()), *(m.close() for m in muxes.values()))
