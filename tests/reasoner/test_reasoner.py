"""The reasoner as a real process against a real fake-llm: answers, retries, fallbacks, broken streams, keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import orjson
import pytest

from tests.conftest import StartService
from tests.reasoner.conftest import (
    KEYS,
    complete,
    complete_error,
    outcomes,
    queue,
    request,
    stats,
    stream,
    text_of,
    write_config,
)
from weir.fakellm.server import key_fingerprint
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.reasoner.v1 import reasoner_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tests.reasoner.conftest import Stub


@pytest.fixture(scope="module")
def reasoner(fake: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One reasoner for the module (started like `start_service` does); yields its gRPC address."""
    tmp = tmp_path_factory.mktemp("reasoner")
    env = {**KEYS, "WEIR_CONFIG": str(write_config(tmp / "weir.toml", fake)), "WEIR_REASONER_PORT": "0",
           "WEIR_REASONER_BACKOFF_BASE_MS": "5", "WEIR_REASONER_BACKOFF_MAX_MS": "20",
           "WEIR_REASONER_MAX_RETRIES": "2", "WEIR_STATE_DIR": str(tmp / "state"),
           "WEIR_REASONER_BREAKER_FAILURES": "1000"}  # breakers have their own tests and process
    proc = supervisor.start("reasoner", supervisor.python_module("services.reasoner"), env, log_dir=tmp)
    yield proc.grpc
    assert proc.stop() == 0


@pytest.fixture
async def stub(reasoner: str) -> AsyncIterator[Stub]:
    channel = open_channel(reasoner)
    yield pb_grpc.ReasonerServiceStub(channel)
    await channel.close()


# ---------------------------------------------------------------------------------------------- answers


async def test_complete_forwards_and_reports_real_usage(stub: Stub,
                                                        http: aiohttp.ClientSession) -> None:
    req = request(temperature=0.3, max_tokens=100, seed=7, stop=["zzz"])
    req.tools_json = '[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]'
    req.extra_json = '{"logit_bias": {"50256": -100}, "model": "ignored"}'
    req.user = "u-1"
    resp = await complete(stub, req, "fake-small", "fake-large")
    assert resp.model == "fake-small" and resp.provider == "fake"
    assert resp.content.startswith("[fake-small:")
    assert resp.finish_reason == "stop"
    assert resp.provider_response_id.startswith("chatcmpl-")
    assert outcomes(resp.attempts) == [("fake-small", "ok", 200)]

    body = (await stats(http))["last_body"]
    assert body["model"] == "fake-small"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "What is a weir?"}]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["stop"]) == (0.3, 100, 7, ["zzz"])
    assert body["tools"][0]["function"]["name"] == "lookup"
    assert body["logit_bias"] == {"50256": -100} and body["user"] == "u-1"
    assert "stream" not in body

    # the same body sent straight to the fake gives the same answer and usage
    async with http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-a"}) as r:
        direct = await r.json()
    assert direct["choices"][0]["message"]["content"] == resp.content
    assert resp.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert resp.usage.completion_tokens == direct["usage"]["completion_tokens"] == 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 16


async def test_stream_matches_complete(stub: Stub, http: aiohttp.ClientSession) -> None:
    unary = await complete(stub, request(), "fake-small")
    events, err = await stream(stub, request(), "fake-small")
    assert err is None
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    assert (events[0].started.model, events[0].started.provider) == ("fake-small", "fake")
    assert text_of(events) == unary.content
    done = events[-1].done
    assert (done.model, done.provider, done.finish_reason) == ("fake-small", "fake", "stop")
    assert done.usage == unary.usage
    body = (await stats(http))["last_body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_reasoning_is_passed_separately(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "reasoning", 2)
    unary = await complete(stub, request(), "fake-small")
    assert unary.reasoning_content.startswith("Thinking")
    assert unary.usage.reasoning_tokens > 0
    events, err = await stream(stub, request(), "fake-small")
    assert err is None
    reasoning = "".join(e.delta.reasoning for e in events if e.WhichOneof("event") == "delta")
    assert reasoning == unary.reasoning_content
    assert text_of(events) == unary.content
    first_content = next(i for i, e in enumerate(events) if e.delta.content)
    assert all(not e.delta.reasoning for e in events[first_content + 1:])  # a delta may carry both, in order


async def test_tool_calls(stub: Stub) -> None:
    req = request()
    req.tools_json = '[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]'
    req.tool_choice_json = '"required"'
    unary = await complete(stub, req, "fake-small")
    assert unary.finish_reason == "tool_calls"
    call = orjson.loads(unary.tool_calls_json)[0]
    assert call["function"]["name"] == "lookup"
    events, err = await stream(stub, req, "fake-small")
    assert err is None and events[-1].done.finish_reason == "tool_calls"
    deltas = [orjson.loads(e.delta.tool_calls_json) for e in events if e.delta.tool_calls_json]
    assert deltas[0][0]["function"]["name"] == "lookup"
    args = "".join(d[0]["function"].get("arguments", "") for d in deltas)
    assert args == call["function"]["arguments"]


async def test_keys_rotate(stub: Stub, http: aiohttp.ClientSession) -> None:
    for i in range(4):
        await complete(stub, request(f"question {i}"), "fake-small")
    assert (await stats(http))["keys"] == {key_fingerprint("key-a"): 2, key_fingerprint("key-b"): 2}


# ---------------------------------------------------------------------------------------------- failures


async def test_rate_limit_with_retry_after_then_success(stub: Stub,
                                                        http: aiohttp.ClientSession) -> None:
    await queue(http, "429:0.2", 1, "fake-small")
    resp = await complete(stub, request(), "fake-small", "fake-large")
    assert resp.model == "fake-small"
    assert outcomes(resp.attempts) == [("fake-small", "rate_limited", 429), ("fake-small", "ok", 200)]
    assert (await stats(http))["by_model"] == {"fake-small": 2}


async def test_persistent_500_falls_back(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "500", -1, "fake-small")
    resp = await complete(stub, request(), "fake-small", "fake-large")
    assert resp.model == "fake-large" and resp.content.startswith("[fake-large:")
    assert outcomes(resp.attempts) == [("fake-small", "server_error", 500)] * 3 + [("fake-large", "ok", 200)]
    assert resp.usage.completion_tokens == 16

    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is None
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:4] == ["attempt"] * 3 + ["started"] and kinds[-1] == "done"
    assert kinds.count("started") == 1
    assert events[3].started.model == events[-1].done.model == "fake-large"


async def test_connection_reset_is_retried(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "reset", 1, "fake-small")
    resp = await complete(stub, request(), "fake-small")
    assert outcomes(resp.attempts) == [("fake-small", "connection_error", 0), ("fake-small", "ok", 200)]


async def test_context_length_skips_to_larger_window(stub: Stub,
                                                     http: aiohttp.ClientSession) -> None:
    await queue(http, "context_length", -1, "fake-small")
    resp = await complete(stub, request(), "fake-small", "fake-tiny", "fake-large")
    assert resp.model == "fake-large"
    assert outcomes(resp.attempts) == [("fake-small", "context_length", 400), ("fake-large", "ok", 200)]
    assert (await stats(http))["by_model"] == {"fake-small": 1, "fake-large": 1}

    err = await complete_error(stub, request(), "fake-small", "fake-tiny")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert "maximum context length" in err.message


async def test_content_filter_is_not_retried(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "content_filter", -1, "fake-small")
    err = await complete_error(stub, request(), "fake-small", "fake-large")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "CONTENT_FILTERED"
    assert "content management policy" in err.message
    assert err.metadata["attempts"] == "fake-small:content_filtered:400"
    assert (await stats(http))["by_model"] == {"fake-small": 1}

    events, serr = await stream(stub, request(), "fake-small", "fake-large")
    assert serr is not None and serr.reason == "CONTENT_FILTERED"
    assert [e.attempt.outcome for e in events] == ["content_filtered"]


async def test_rejected_parameter_is_a_bad_request(stub: Stub,
                                                   http: aiohttp.ClientSession) -> None:
    await queue(http, "reject_param:temperature", -1)
    err = await complete_error(stub, request(temperature=1.5), "fake-small", "fake-large")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "UPSTREAM_BAD_REQUEST"
    assert "temperature" in err.message
    assert (await stats(http))["requests"] == 1


async def test_every_target_failing(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "503", -1)
    err = await complete_error(stub, request(), "fake-small", "fake-large")
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.metadata["attempts"].split(",") == ["fake-small:server_error:503"] * 3 + [
        "fake-large:server_error:503"] * 3
    assert err.metadata["model"] == "fake-large"


async def test_long_rate_limits_rest_keys(start_service: StartService, fake: str, tmp_path: Path,
                                          http: aiohttp.ClientSession) -> None:
    """A Retry-After beyond the cap is not waited for: each key gets one try, then the next target; rested
    keys are not used again for that model. (Own process: its keys stay rested afterwards.)"""
    proc = start_service("reasoner", {**KEYS, "WEIR_CONFIG": str(write_config(tmp_path / "w.toml", fake)),
                                      "WEIR_REASONER_PORT": "0", "WEIR_REASONER_RETRY_AFTER_CAP_S": "5"})
    await queue(http, "429:30", -1)
    channel = open_channel(proc.grpc)
    try:
        stub = pb_grpc.ReasonerServiceStub(channel)
        err = await complete_error(stub, request(), "fake-small", "fake-large")
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "RATE_LIMITED"
        assert 29 < err.retry_after_s <= 30
        assert (await stats(http))["by_model"] == {"fake-small": 2, "fake-large": 2}
        err = await complete_error(stub, request(), "fake-small")
        assert err.reason == "RATE_LIMITED" and err.metadata["attempts"] == "fake-small:rate_limited:0"
        assert (await stats(http))["by_model"] == {"fake-small": 2, "fake-large": 2}  # not called again
        await http.post("/_fake/reset")
        resp = await complete(stub, request(), "fake-tiny")  # other models are not limited
        assert outcomes(resp.attempts) == [("fake-tiny", "ok", 200)]
    finally:
        await channel.close()


async def test_invalid_requests(stub: Stub, http: aiohttp.ClientSession) -> None:
    err = await complete_error(stub, request(), "no-such-model")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations[0][0] == "plan[0].model"
    err = await complete_error(stub, request())
    assert err.field_violations == [("plan", "at least one target is required")]
    bad = request()
    bad.tools_json = "[not json"
    err = await complete_error(stub, bad, "fake-small")
    assert err.field_violations[0][0] == "request.tools_json"
    assert (await stats(http))["requests"] == 0


# ---------------------------------------------------------------------------------------------- streams


async def test_stream_cut_midway_is_an_error_not_done(stub: Stub,
                                                      http: aiohttp.ClientSession) -> None:
    await queue(http, "cut:5", 1, "fake-small")
    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is not None
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "STREAM_INTERRUPTED"
    kinds = [e.WhichOneof("event") for e in events]
    assert "done" not in kinds
    assert kinds[0] == "started" and kinds.count("delta") >= 1 and text_of(events).startswith("[fake-small:")
    assert events[-1].attempt.outcome == "stream_cut"
    assert (await stats(http))["by_model"] == {"fake-small": 1}  # no fallback once text went out


async def test_stream_cut_before_any_text_falls_back(stub: Stub,
                                                     http: aiohttp.ClientSession) -> None:
    await queue(http, "cut:1", -1, "fake-small")  # only the role chunk gets through
    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is None
    assert [e.attempt.outcome for e in events if e.WhichOneof("event") == "attempt"] == ["stream_cut"] * 3
    assert [e.started.model for e in events if e.WhichOneof("event") == "started"] == ["fake-large"]
    assert events[-1].done.model == "fake-large"
    assert text_of(events).startswith("[fake-large:")


async def test_stall_is_detected_by_timeout(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "stall:4", 1, "fake-small")
    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is not None and err.reason == "STREAM_INTERRUPTED"
    assert events[-1].attempt.outcome == "stream_stalled"
    assert "done" not in [e.WhichOneof("event") for e in events]


async def test_slow_first_token_is_retried(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "slow_first_token:8000", 1, "fake-small")
    events, err = await stream(stub, request(), "fake-small")
    assert err is None
    assert events[0].attempt.outcome == "timeout"  # the only target: retried
    assert events[-1].done.model == "fake-small"


async def test_timeout_falls_back_without_retrying(stub: Stub, http: aiohttp.ClientSession) -> None:
    """No first token / no response: the next target at once (a retry would cost another whole timeout)."""
    await queue(http, "slow_first_token:8000", -1, "fake-small")
    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is None
    assert [e.attempt.outcome for e in events if e.WhichOneof("event") == "attempt"] == ["timeout"]
    assert events[-1].done.model == "fake-large"
    assert (await stats(http))["by_model"] == {"fake-small": 1, "fake-large": 1}


@pytest.mark.parametrize("fault,outcome", [("pace:20,malformed:6", "stream_malformed"),
                                           ("no_done", "stream_incomplete")])
async def test_broken_stream_endings(stub: Stub, http: aiohttp.ClientSession,
                                     fault: str, outcome: str) -> None:
    await queue(http, fault, 1, "fake-small")
    events, err = await stream(stub, request(), "fake-small", "fake-large")
    assert err is not None and err.code == grpc.StatusCode.ABORTED and err.reason == "STREAM_INTERRUPTED"
    assert events[-1].attempt.outcome == outcome
    assert "done" not in [e.WhichOneof("event") for e in events]
    assert text_of(events).startswith("[fake-small:")


async def test_malformed_before_any_text_is_retried(stub: Stub,
                                                    http: aiohttp.ClientSession) -> None:
    await queue(http, "malformed:1", 1, "fake-small")
    events, err = await stream(stub, request(), "fake-small")
    assert err is None
    assert events[0].attempt.outcome == "stream_malformed"
    assert events[-1].done.model == "fake-small"


# ---------------------------------------------------------------------------------------------- Anthropic


async def test_anthropic_provider(stub: Stub, http: aiohttp.ClientSession) -> None:
    resp = await complete(stub, request(), "claude")
    assert resp.model == "claude" and resp.provider == "fake-anthropic"
    assert resp.content.startswith("[claude-fake:") and resp.finish_reason == "stop"
    assert resp.provider_response_id.startswith("msg_")
    assert resp.usage.completion_tokens == 16 and resp.usage.prompt_tokens > 0
    st = await stats(http)
    body = st["last_body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "What is a weir?"}]
    assert body["max_tokens"] == 4096 and body["model"] == "claude-fake"
    assert st["last_headers"]["anthropic-version"] == "2023-06-01"
    assert st["by_endpoint"] == {"/v1/messages": 1}
    assert st["keys"] == {key_fingerprint("key-a"): 1}

    events, err = await stream(stub, request(), "claude")
    assert err is None
    assert text_of(events) == resp.content
    assert events[-1].done.usage == resp.usage and events[-1].done.finish_reason == "stop"

    await queue(http, "reasoning", 1)
    events, err = await stream(stub, request(max_tokens=3), "claude")
    assert err is None and events[-1].done.finish_reason == "length"
    assert "".join(e.delta.reasoning for e in events).startswith("Thinking")

    await queue(http, "529", -1, "claude-fake")
    fallback = await complete(stub, request(), "claude", "fake-large")
    assert fallback.model == "fake-large"
    assert outcomes(fallback.attempts)[0] == ("claude", "server_error", 529)

    await http.post("/_fake/reset")
    await queue(http, "no_done", 1)
    events, err = await stream(stub, request(), "claude")
    assert err is not None and err.reason == "STREAM_INTERRUPTED"


async def test_process_runs_with_start_service(start_service: StartService, fake: str, tmp_path: Path,
                                               http: aiohttp.ClientSession) -> None:
    """The conftest way of starting it, with retries switched off."""
    proc = start_service("reasoner", {**KEYS, "WEIR_CONFIG": str(write_config(tmp_path / "w.toml", fake)),
                                      "WEIR_REASONER_PORT": "0", "WEIR_REASONER_MAX_RETRIES": "0"})
    await queue(http, "500", 1, "fake-small")
    channel = open_channel(proc.grpc)
    try:
        resp = await complete(pb_grpc.ReasonerServiceStub(channel), request(), "fake-small", "fake-large")
    finally:
        await channel.close()
    assert outcomes(resp.attempts) == [("fake-small", "server_error", 500), ("fake-large", "ok", 200)]


async def test_outcomes_reach_the_router(start_service: StartService, fake: str, tmp_path: Path,
                                         http: aiohttp.ClientSession) -> None:
    """With WEIR_ROUTER_ADDR set, failed attempts are reported and the router cools the failing model down."""
    from weir.router.v1 import router_service_pb2, router_service_pb2_grpc

    config = str(write_config(tmp_path / "w.toml", fake))
    router = start_service("router", {"WEIR_CONFIG": config, "WEIR_ROUTER_PORT": "0"})
    proc = start_service("reasoner", {**KEYS, "WEIR_CONFIG": config, "WEIR_REASONER_PORT": "0",
                                      "WEIR_ROUTER_ADDR": router.grpc, "WEIR_REASONER_BACKOFF_BASE_MS": "5"})
    await queue(http, "500", -1, "fake-small")
    async with open_channel(proc.grpc) as channel, open_channel(router.grpc) as rchannel:
        resp = await complete(pb_grpc.ReasonerServiceStub(channel), request(), "fake-small", "fake-large")
        assert resp.model == "fake-large"
        route = router_service_pb2_grpc.RouterServiceStub(rchannel)
        for _ in range(100):  # reports are fire-and-forget: wait until they have landed
            decision = await route.Route(router_service_pb2.RouteRequest(requested_model="fake-small"), timeout=5)
            if "cooldown" in decision.reason:
                break
            await asyncio.sleep(0.05)
    assert "fake-small in cooldown" in decision.reason
    assert decision.plan[0].model != "fake-small"
