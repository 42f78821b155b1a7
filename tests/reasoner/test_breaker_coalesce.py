"""The circuit breaker (on a fake clock) and the coalescing of concurrent calls, without processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc
import pytest

from services.reasoner.breaker import BreakerPolicy, Breakers
from services.reasoner.coalesce import StreamFlights, UnaryFlights
from weir.kit.errors import WeirError

KEY = ("fake", "fake-small")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(b: Breakers, n: int = 1) -> None:
    for _ in range(n):
        permit = b.allow(KEY)
        assert permit is not None
        b.failure(permit)


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    b = Breakers(BreakerPolicy(threshold=3, cooldown_s=10, cooldown_max_s=25), clock)
    fail(b, 2)
    ok = b.allow(KEY)
    assert ok is not None and not ok.probe
    b.success(ok)  # a success resets the count
    fail(b, 2)
    assert b.allow(KEY) is not None and not b.is_open(KEY)
    fail(b, 1)
    assert b.is_open(KEY) and b.allow(KEY) is None and b.remaining_s(KEY) == 10
    assert b.allow(("fake", "fake-large")) is not None  # per deployment

    clock.now += 10
    probe = b.allow(KEY)
    assert probe is not None and probe.probe
    assert b.allow(KEY) is None  # half-open: one probe at a time
    b.failure(probe)  # failed probe: open again, twice as long
    assert b.remaining_s(KEY) == 20
    clock.now += 20
    probe = b.allow(KEY)
    assert probe is not None and probe.probe
    b.failure(probe)
    assert b.remaining_s(KEY) == 25  # capped
    clock.now += 25
    probe = b.allow(KEY)
    assert probe is not None
    b.success(probe)
    assert not b.is_open(KEY) and b.allow(KEY) is not None
    fail(b, 3)
    assert b.remaining_s(KEY) == 10  # a success reset the cool-down too


def test_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    b = Breakers(BreakerPolicy(threshold=1, cooldown_s=1, cooldown_max_s=1), clock)
    fail(b)
    clock.now += 1
    probe = b.allow(KEY)
    assert probe is not None and probe.probe and b.allow(KEY) is None
    b.release(probe)
    again = b.allow(KEY)
    assert again is not None and again.probe


def test_late_failure_of_a_call_let_through_earlier_does_not_extend_the_opening() -> None:
    clock = Clock()
    b = Breakers(BreakerPolicy(threshold=2, cooldown_s=5, cooldown_max_s=60), clock)
    early = [b.allow(KEY), b.allow(KEY), b.allow(KEY)]
    for permit in early[:2]:
        assert permit is not None
        b.failure(permit)
    assert b.remaining_s(KEY) == 5
    clock.now += 1
    assert early[2] is not None
    b.failure(early[2])
    assert b.remaining_s(KEY) == 4


# ---------------------------------------------------------------------------------------------- coalescing


async def test_unary_calls_share_one_result_and_survive_the_first_caller_leaving() -> None:
    calls = 0
    release = asyncio.Event()

    async def upstream() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "answer"

    flights: UnaryFlights[str] = UnaryFlights(lambda r: r + " (shared)")
    first = asyncio.create_task(flights.run("k", upstream))
    others = [asyncio.create_task(flights.run("k", upstream)) for _ in range(3)]
    other_key = asyncio.create_task(flights.run("other", upstream))
    await asyncio.sleep(0)
    first.cancel()  # the first caller goes away: the call goes on for the others
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*others)
    assert first.cancelled()
    assert sorted(results) == ["answer", "answer (shared)", "answer (shared)"]
    assert await other_key == "answer"
    assert calls == 2 and len(flights) == 0
    assert await flights.run("k", upstream) == "answer" and calls == 3  # a finished call is not reused


async def test_unary_error_reaches_every_caller_and_last_leaver_cancels() -> None:
    started = asyncio.Event()
    cancelled = False

    async def failing() -> str:
        await asyncio.sleep(0.01)
        raise WeirError(grpc.StatusCode.UNAVAILABLE, "down")

    flights: UnaryFlights[str] = UnaryFlights(str)
    results = await asyncio.gather(*(flights.run("k", failing) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, WeirError) and r.message == "down" for r in results)

    async def hanging() -> str:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        return ""

    waiters = [asyncio.create_task(flights.run("h", hanging)) for _ in range(2)]
    await started.wait()
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.sleep(0)
    assert cancelled and len(flights) == 0


async def test_stream_followers_get_every_event_from_the_start() -> None:
    calls = 0
    step = asyncio.Event()

    async def upstream() -> AsyncGenerator[str, None]:
        nonlocal calls
        calls += 1
        for word in ("a", "b", "c"):
            yield word
            await step.wait()
        yield "done"

    flights: StreamFlights[str] = StreamFlights(lambda e: e == "done", lambda e: e + "*")

    async def collect(stop_after: int = 0) -> list[str]:
        out = []
        async for event in flights.follow("k", upstream):
            out.append(event)
            if stop_after and len(out) == stop_after:
                break
        return out

    leader = asyncio.create_task(collect(stop_after=1))  # leaves after the first event
    follower = asyncio.create_task(collect())
    for _ in range(5):
        await asyncio.sleep(0)
    assert await leader == ["a"]
    late = asyncio.create_task(collect())  # joins mid-stream: still gets "a" first
    for _ in range(5):
        await asyncio.sleep(0)
    step.set()
    results = [await follower, await late]
    assert sorted(results) == [["a", "b", "c", "done"], ["a", "b", "c", "done*"]]
    assert calls == 1 and len(flights) == 0


async def test_stream_error_reaches_every_subscriber() -> None:
    async def broken() -> AsyncGenerator[str, None]:
        yield "a"
        await asyncio.sleep(0.01)
        raise WeirError(grpc.StatusCode.ABORTED, "cut")

    flights: StreamFlights[str] = StreamFlights(lambda e: e == "done", str)

    async def collect() -> list[str]:
        return [e async for e in flights.follow("k", broken)]

    results = await asyncio.gather(collect(), collect(), return_exceptions=True)
    assert all(isinstance(r, WeirError) and r.message == "cut" for r in results)


def test_breaker_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        Breakers(BreakerPolicy(threshold=0))
