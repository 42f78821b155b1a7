"""Rate limits per key, per team and per deployment: headers, 429s, reservations reconciled with real usage
(streams, cancellations, errors, cache hits)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from tests.gateway.conftest import NewKey, unique_question, wait_events
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh, add_gateway
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from weir.kit.errors import parse_rpc_error
from weir.mesh_config import FAKE_CONFIG

LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
                 "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")


def post(mesh: Mesh, key: str, messages: Sequence[Mapping[str, Any]] | None = None, **body: Any) -> httpx.Response:
    return httpx.post(f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "fake-small", "messages": messages or unique_question(), **body})


def test_every_limit_header_on_success_and_on_429(mesh: Mesh, new_key: NewKey) -> None:
    raw, view = new_key(rpm=3, tpm=5000)
    remaining_tokens = 5000
    for expected in (2, 1, 0):
        r = post(mesh, raw, max_tokens=30)
        assert r.status_code == 200, r.text
        h = r.headers
        assert all(name in h for name in LIMIT_HEADERS), h
        assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-limit-tokens"] == "5000"
        assert int(h["x-ratelimit-remaining-requests"]) == expected
        assert int(h["x-ratelimit-remaining-tokens"]) < remaining_tokens
        remaining_tokens = int(h["x-ratelimit-remaining-tokens"])
        assert DURATION.match(h["x-ratelimit-reset-requests"]) and DURATION.match(h["x-ratelimit-reset-tokens"])
    client = openai.OpenAI(base_url=mesh.base_url, api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-small", messages=unique_question())
    limited = info.value.response.headers
    assert all(name in limited for name in LIMIT_HEADERS), limited
    assert limited["x-ratelimit-remaining-requests"] == "0"
    assert int(limited["retry-after"]) >= 1 and int(limited["retry-after-ms"]) > 0
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert view["id"] in body["message"] and "requests per minute" in body["message"]


async def test_grpc_carries_the_same_limits(mesh: Mesh, new_key: NewKey) -> None:
    raw, _ = new_key(rpm=1, tpm=5000)
    md = (("authorization", f"Bearer {raw}"),)
    req = types_pb2.ChatRequest(model="fake-small", messages=[types_pb2.ChatMessage(role="user", content="Hi grpc")])
    async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        call = stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=req), metadata=md)
        await call
        initial = dict(await call.initial_metadata())
        assert initial["x-ratelimit-limit-requests"] == "1" and initial["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=req), metadata=md)
    e = parse_rpc_error(err.value)
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.reason == "RATE_LIMIT_EXCEEDED"
    assert e.retry_after_s >= 1 and e.metadata["x-ratelimit-limit-requests"] == "1"


def test_token_window_reserves_then_reconciles(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    tpm = 600
    raw, view = new_key(tpm=tpm)
    first = post(mesh, raw, max_tokens=100)
    used1 = first.json()["usage"]["total_tokens"]
    reserved1 = tpm - int(first.headers["x-ratelimit-remaining-tokens"])
    assert reserved1 > used1, "the reservation (prompt + max_tokens) bounds the real usage"
    wait_events(admin, 1, key=view["id"])
    second = post(mesh, raw, max_tokens=100)
    event = next(e for e in wait_events(admin, 2, key=view["id"]) if e["id"] == second.headers["x-request-id"])
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == tpm - used1 - event["reserved_tokens"], \
        "the first request counts with its real usage, the second with its reservation"
    too_many = post(mesh, raw, max_tokens=tpm - 2 * used1)
    assert too_many.status_code == 429 and too_many.json()["error"]["type"] == "tokens"
    assert int(too_many.headers["retry-after"]) >= 1
    assert "tokens per minute" in too_many.json()["error"]["message"]
    too_large = post(mesh, raw, max_tokens=tpm + 1)
    assert too_large.status_code == 400 and too_large.json()["error"]["code"] == "request_too_large"
    assert f"the limit is {tpm}" in too_large.json()["error"]["message"]


def test_team_limits_are_shared_by_its_keys(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    team = "t-" + uuid.uuid4().hex[:10]
    assert admin.put(f"/v1/admin/teams/{team}", json={"rpm": 2}).json()["rpm"] == 2
    k1, _ = new_key(team=team)
    k2, _ = new_key(team=team)
    assert post(mesh, k1).status_code == 200
    assert post(mesh, k2).headers["x-ratelimit-remaining-requests"] == "0"
    refused = post(mesh, k1)
    assert refused.status_code == 429 and f"team {team}" in refused.json()["error"]["message"]


def test_cache_hit_costs_a_request_but_no_tokens(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    """Over its token window a key is still answered from the exact cache (free), and the ledger records what
    the hit saved at the original model's price."""
    raw, view = new_key(tpm=70)
    question = unique_question("Cacheable")
    first = post(mesh, raw, question, max_tokens=30, temperature=0)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]
    hit = None
    for _ in range(60):
        r = post(mesh, raw, question, max_tokens=30, temperature=0)
        if r.status_code == 200:
            hit = r
            break
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens", r.text
    assert hit is not None and hit.headers["x-weir-cache"] == "exact"
    refused = post(mesh, raw, max_tokens=30, temperature=0)
    assert refused.status_code == 429, "a new question still needs tokens the window no longer has"
    events = wait_events(admin, 2, key=view["id"])
    hit_event = next(e for e in events if e["id"] == hit.headers["x-request-id"])
    assert hit_event["cache"] == "exact" and hit_event["prompt_tokens"] == hit_event["completion_tokens"] == 0
    assert hit_event["cost_usd"] == 0 and hit_event["model"] == "fake-small"
    assert hit_event["saved_tokens"] == used["prompt_tokens"] + used["completion_tokens"]
    assert hit_event["saved_usd"] == pytest.approx((used["prompt_tokens"] * 0.15 + used["completion_tokens"] * 0.6)
                                                   / 1e6)


def test_stream_is_settled_with_its_real_usage(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key(tpm=10_000)
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {raw}"},
                      json={"model": "fake-small", "messages": unique_question(), "stream": True, "max_tokens": 200,
                            "stream_options": {"include_usage": True}}) as r:
        assert all(name in r.headers for name in LIMIT_HEADERS if name.endswith("tokens"))
        assert "x-ratelimit-limit-requests" not in r.headers, "only limited dimensions are reported"
        request_id = r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    usage = httpx.Response(200, content=lines[-1][6:]).json()["usage"]
    event = next(e for e in wait_events(admin, 1, key=view["id"]) if e["id"] == request_id)
    assert event["status"] == "ok" and event["completion_tokens"] == usage["completion_tokens"] > 0
    assert event["reserved_tokens"] > event["prompt_tokens"] + event["completion_tokens"]
    after = post(mesh, raw, max_tokens=10)
    reserved = next(e for e in wait_events(admin, 2, key=view["id"]) if e["id"] == after.headers["x-request-id"])
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == \
        10_000 - usage["prompt_tokens"] - usage["completion_tokens"] - reserved["reserved_tokens"]


def test_cancelled_stream_is_charged_what_was_streamed(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key(tpm=10_000)
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:100", "count": 1, "model": "fake-small"})
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {raw}"},
                      json={"model": "fake-small", "messages": unique_question(), "stream": True}) as r:
        request_id = r.headers["x-request-id"]
        got = 0
        for line in r.iter_lines():
            if '"content":"' in line:
                got += 1
                if got == 3:
                    break  # the client goes away mid-answer
    event = next(e for e in wait_events(admin, 1, key=view["id"]) if e["id"] == request_id)
    assert event["status"] == "cancelled" and event["prompt_tokens"] > 0
    assert 1 <= event["completion_tokens"] < 24, "charged the streamed part, not the reservation or a whole answer"
    assert event["cost_usd"] > 0


def test_failed_request_releases_its_tokens(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key(tpm=10_000)
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "400", "count": 1, "model": "fake-small"})
    failed = post(mesh, raw, max_tokens=50)
    assert failed.status_code >= 400 and "x-ratelimit-limit-tokens" in failed.headers
    event = next(e for e in wait_events(admin, 1, key=view["id"]) if e["id"] == failed.headers["x-request-id"])
    assert event["status"] == "error" and event["prompt_tokens"] == event["completion_tokens"] == 0
    after = post(mesh, raw, max_tokens=10)
    reserved = next(e for e in wait_events(admin, 2, key=view["id"]) if e["id"] == after.headers["x-request-id"])
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 10_000 - reserved["reserved_tokens"]


@pytest.fixture
def limited_deployments(mesh: Mesh, tmp_path: Path) -> Any:
    """A gateway whose model table gives each fake deployment a limit of 2 requests a minute."""
    config = FAKE_CONFIG.read_text().replace('context_window = 16384', 'context_window = 16384\nrpm = 2')
    config = config.replace('context_window = 128000', 'context_window = 128000\nrpm = 2')
    path = tmp_path / "limited.toml"
    path.write_text(config)
    proc = add_gateway(mesh, "gateway-deploy", {"WEIR_CONFIG": str(path)})
    yield proc
    proc.stop()
    mesh.procs.pop("gateway-deploy", None)


def test_deployment_limits_move_traffic_then_refuse(mesh: Mesh, limited_deployments: Any) -> None:
    models = []
    for _ in range(4):
        r = httpx.post(f"http://{limited_deployments.http}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {mesh.master_key}"},
                       json={"model": "fake-small", "messages": unique_question("Deployment")})
        assert r.status_code == 200, r.text
        models.append(r.headers["x-weir-model"])
    assert models == ["fake-small", "fake-small", "fake-large", "fake-large"], "full deployments are skipped"
    refused = httpx.post(f"http://{limited_deployments.http}/v1/chat/completions",
                         headers={"Authorization": f"Bearer {mesh.master_key}"},
                         json={"model": "fake-small", "messages": unique_question("Deployment")})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "deployment" in refused.json()["error"]["message"]
