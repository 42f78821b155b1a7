"""The reasoner process with its circuit breakers, coalescing and fallback rules, against a real fake-llm."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest

from tests.conftest import StartService
from tests.reasoner.conftest import (
    KEYS,
    complete,
    complete_error,
    outcomes,
    plan,
    queue,
    request,
    stats,
    stream,
    text_of,
    write_config,
)
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.errors import RemoteError, parse_rpc_error
from weir.reasoner.v1 import reasoner_service_pb2 as pb
from weir.reasoner.v1 import reasoner_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tests.reasoner.conftest import Stub

COOLDOWN_S = 0.6


def reasoner_env(fake: str, tmp: Path, breaker_failures: int) -> dict[str, str]:
    return {**KEYS, "WEIR_CONFIG": str(write_config(tmp / "w.toml", fake)), "WEIR_REASONER_PORT": "0",
            "WEIR_REASONER_BACKOFF_BASE_MS": "5", "WEIR_REASONER_BACKOFF_MAX_MS": "20",
            "WEIR_REASONER_BREAKER_FAILURES": str(breaker_failures),
            "WEIR_REASONER_BREAKER_COOLDOWN_S": str(COOLDOWN_S), "WEIR_STATE_DIR": str(tmp / "state")}


@pytest.fixture
async def stub(start_service: StartService, fake: str, tmp_path: Path) -> AsyncIterator[Stub]:
    """A reasoner of its own (fresh breakers): 2 failures open a breaker for 0.6 s."""
    proc = start_service("reasoner", reasoner_env(fake, tmp_path, 2))
    async with open_channel(proc.grpc) as channel:
        yield pb_grpc.ReasonerServiceStub(channel)


@pytest.fixture(scope="module")
async def shared(fake: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stub]:
    """One reasoner for the coalescing tests (breakers out of the way: they have the tests above)."""
    tmp = tmp_path_factory.mktemp("coalesce")
    proc = supervisor.start("reasoner", supervisor.python_module("services.reasoner"), reasoner_env(fake, tmp, 1000),
                            log_dir=tmp)
    async with open_channel(proc.grpc) as channel:
        yield pb_grpc.ReasonerServiceStub(channel)
    assert proc.stop() == 0


async def test_open_breaker_skips_the_deployment_until_a_probe_succeeds(stub: Stub,
                                                                        http: aiohttp.ClientSession) -> None:
    await queue(http, "500", -1, "fake-small")
    resp = await complete(stub, request(), "fake-small", "fake-large")
    assert resp.model == "fake-large"
    # the second failure opened the breaker: the last retry is skipped without a call
    assert outcomes(resp.attempts) == [("fake-small", "server_error", 500), ("fake-small", "server_error", 500),
                                       ("fake-small", "circuit_open", 0), ("fake-large", "ok", 200)]
    resp = await complete(stub, request("another"), "fake-small", "fake-large")
    assert outcomes(resp.attempts) == [("fake-small", "circuit_open", 0), ("fake-large", "ok", 200)]
    events, err = await stream(stub, request("a third"), "fake-small", "fake-large")
    assert err is None and events[0].attempt.outcome == "circuit_open" and events[-1].done.model == "fake-large"
    assert (await stats(http))["by_model"] == {"fake-small": 2, "fake-large": 3}  # not hammered

    err = await complete_error(stub, request(), "fake-small")  # nothing else to try: fail fast
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "CIRCUIT_OPEN"
    assert 0 < err.retry_after_s <= COOLDOWN_S

    await http.post("/_fake/reset")  # the deployment recovers; after the cool-down one probe goes through
    await asyncio.sleep(COOLDOWN_S * 1.5)  # (failed probes and longer cool-downs: test_breaker_coalesce.py)
    resp = await complete(stub, request(), "fake-small", "fake-large")
    assert outcomes(resp.attempts) == [("fake-small", "ok", 200)]
    resp = await complete(stub, request("more"), "fake-small", "fake-large")
    assert outcomes(resp.attempts) == [("fake-small", "ok", 200)]


async def test_request_faults_do_not_open_the_breaker(stub: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "context_length", 3, "fake-small")
    for i in range(3):
        resp = await complete(stub, request(f"long {i}"), "fake-small", "fake-large")
        assert outcomes(resp.attempts)[0] == ("fake-small", "context_length", 400)
    resp = await complete(stub, request(), "fake-small", "fake-large")
    assert outcomes(resp.attempts) == [("fake-small", "ok", 200)]


async def test_fallback_rejecting_a_parameter_is_skipped(stub: Stub, http: aiohttp.ClientSession) -> None:
    """A 400 from a fallback tried only because the primary is down does not end the request."""
    await queue(http, "503", -1, "fake-small")
    await queue(http, "reject_param:temperature", -1, "fake-tiny")
    resp = await complete(stub, request(temperature=0.7), "fake-small", "fake-tiny", "fake-large")
    assert resp.model == "fake-large"
    assert outcomes(resp.attempts)[-2:] == [("fake-tiny", "bad_request", 400), ("fake-large", "ok", 200)]
    # with no target left after it, the request fails as unavailable (the primary's fault), not as a 400
    err = await complete_error(stub, request(temperature=0.7), "fake-small", "fake-tiny")
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.metadata["attempts"].endswith("fake-tiny:bad_request:400")


def coalesced(key: str, tenant: str = "t1", *models: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(request=request("coalesce me"), plan=plan(*(models or ("fake-small",))),
                              tenant=tenant, coalesce_key=key)


async def test_identical_concurrent_calls_share_one_upstream_call(shared: Stub,
                                                                  http: aiohttp.ClientSession) -> None:
    await queue(http, "slow_first_token:600", 1)
    responses = await asyncio.gather(*(shared.Complete(coalesced("k1"), timeout=10) for _ in range(4)))
    assert (await stats(http))["by_model"] == {"fake-small": 1}
    assert len({r.content for r in responses}) == 1 and responses[0].content.startswith("[fake-small:")
    assert sorted(r.coalesced for r in responses) == [False, True, True, True]
    assert all(r.usage == responses[0].usage for r in responses)

    # other tenants, keys and plans never share; an empty key never coalesces
    await http.post("/_fake/reset")
    await queue(http, "slow_first_token:300", -1)
    distinct = [coalesced("k2"), coalesced("k2", "t2"), coalesced("k3"),
                coalesced("k2", "t1", "fake-small", "fake-large"), coalesced(""), coalesced("")]
    await asyncio.gather(*(shared.Complete(r, timeout=10) for r in distinct))
    assert (await stats(http))["by_model"] == {"fake-small": 6}


async def test_first_callers_deadline_does_not_fail_the_others(shared: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "slow_first_token:1200", 1)
    leader = asyncio.ensure_future(shared.Complete(coalesced("k4"), timeout=0.5))
    await asyncio.sleep(0.05)
    follower = asyncio.ensure_future(shared.Complete(coalesced("k4"), timeout=10))
    with pytest.raises(grpc.RpcError) as info:
        await leader
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    resp = await follower
    assert resp.content.startswith("[fake-small:") and not resp.coalesced  # the only one who got it
    assert (await stats(http))["by_model"] == {"fake-small": 1}


async def test_coalesced_error_reaches_every_caller(shared: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "429:0.3", -1)
    results = await asyncio.gather(*(shared.Complete(coalesced("k5"), timeout=10) for _ in range(3)),
                                   return_exceptions=True)
    errors = [parse_rpc_error(r) for r in results if isinstance(r, grpc.RpcError)]
    assert len(errors) == 3 and {e.reason for e in errors} == {"RATE_LIMITED"}
    assert (await stats(http))["by_model"] == {"fake-small": 3}  # one plan's three attempts, not nine


async def test_coalesced_streams_fan_out(shared: Stub, http: aiohttp.ClientSession) -> None:
    await queue(http, "reasoning,pace:50", 1)

    async def one(delay: float) -> tuple[list[pb.StreamCompleteResponse], RemoteError | None]:
        await asyncio.sleep(delay)
        events: list[pb.StreamCompleteResponse] = []
        call = shared.StreamComplete(pb.StreamCompleteRequest(request=request("stream me"), plan=plan("fake-small"),
                                                            tenant="t1", coalesce_key="s1"), timeout=10)
        try:
            async for event in call:
                events.append(event)
        except grpc.RpcError as exc:
            return events, parse_rpc_error(exc)
        return events, None

    # the stream lasts ~1.3 s; the late one joins mid-way and still gets every event from the first
    results = await asyncio.gather(one(0), one(0), one(0.3))
    assert (await stats(http))["by_model"] == {"fake-small": 1}
    assert all(err is None for _, err in results)
    texts = {text_of(events) for events, _ in results}
    assert len(texts) == 1 and texts.pop().startswith("[fake-small:")
    assert all("".join(e.delta.reasoning for e in events).startswith("Thinking") for events, _ in results)
    assert sorted(events[-1].done.coalesced for events, _ in results) == [False, True, True]
    first = results[0][0]
    assert all(len(events) == len(first) for events, _ in results)

    # a follower whose leader hangs up keeps streaming to the end
    await queue(http, "slow_first_token:600,pace:25", 1)
    leader = shared.StreamComplete(pb.StreamCompleteRequest(request=request("hang up"), plan=plan("fake-small"),
                                                          tenant="t1", coalesce_key="s2"), timeout=10)
    follower = asyncio.ensure_future(stream_with_key(shared, "hang up", "s2"))
    async for event in leader:  # (the follower joined during the slow first token)
        if event.WhichOneof("event") == "delta":
            leader.cancel()
            break
    events, err = await follower
    assert err is None and events[-1].WhichOneof("event") == "done" and text_of(events).startswith("[fake-small:")
    assert (await stats(http))["by_model"] == {"fake-small": 2}


async def stream_with_key(stub: Stub, text: str,
                          key: str) -> tuple[list[pb.StreamCompleteResponse], RemoteError | None]:
    await asyncio.sleep(0.05)
    events: list[pb.StreamCompleteResponse] = []
    call = stub.StreamComplete(pb.StreamCompleteRequest(request=request(text), plan=plan("fake-small"),
                                                        tenant="t1", coalesce_key=key), timeout=10)
    try:
        async for event in call:
            events.append(event)
    except grpc.RpcError as exc:
        return events, parse_rpc_error(exc)
    return events, None
