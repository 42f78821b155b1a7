"""Unary calls on one multiplexed stream (weir.kit.mux) against a real server: the same answers, errors,
deadlines, cancellation and graceful stop as a unary call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from weir.kit import metrics
from weir.kit.errors import WeirError, invalid_argument, parse_rpc_error
from weir.kit.mux import MESSAGE_BYTES, MuxChannel, MuxUnsupported, _chunks, _Outbox, mux_stub
from weir.kit.server import create_server, stop_server
from weir.mux.v1 import mux_service_pb2 as pb_mux
from weir.reasoner.v1 import reasoner_service_pb2 as reasoner_pb
from weir.reasoner.v1 import reasoner_service_pb2_grpc as reasoner_grpc
from weir.router.v1 import router_service_pb2 as pb
from weir.router.v1 import router_service_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"]


class Probe(pb_grpc.RouterServiceServicer):
    """Route answers by the requested model: "bad", "busy", "bug", "slow:<s>", "left" or an echo."""

    service_names: tuple[str, ...] = (SERVICE.full_name,)

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        pass

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RouterServiceServicer_to_server(self, server)

    async def close(self) -> None:
        pass

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        model = request.requested_model
        if model == "bad":
            raise invalid_argument("model is bad", ("requested_model", "must not be 'bad'"))
        if model == "busy":
            raise WeirError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", reason="RATE_LIMITED",
                            metadata={"limit": "10"}, retry_after_s=2.5)
        if model == "bug":
            raise RuntimeError("a bug with a secret inside")
        if model == "timeout":
            raise TimeoutError("a Redis call timed out inside the handler")
        if model == "left":
            return pb.RouteResponse(reason=f"{context.time_remaining():.3f}")
        if model.startswith("slow:"):
            self.started.setdefault(model, asyncio.Event()).set()
            try:
                await asyncio.sleep(float(model.split(":")[1]))
            except asyncio.CancelledError:
                self.cancelled.setdefault(model, asyncio.Event()).set()
                raise
        return pb.RouteResponse(reason=f"echo {model}", strong_probability=request.quality_bias)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(id="m1")])

    async def ReportOutcome(self, request: pb.ReportOutcomeRequest,
                            context: grpc.aio.ServicerContext) -> pb.ReportOutcomeResponse:
        return pb.ReportOutcomeResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Probe, int, grpc.aio.Server]]:
    probe = Probe()
    server, port = await create_server(probe, "127.0.0.1", 0)
    yield probe, port, server
    await server.stop(0)


def _stub(mux: MuxChannel) -> pb_grpc.RouterServiceAsyncStub:
    return mux_stub(pb_grpc.RouterServiceStub(grpc.aio.insecure_channel(mux.target)), SERVICE, mux)


async def _seen(events: dict[str, asyncio.Event], model: str) -> None:
    """Waits (5 s at most) until the probe has started, or seen cancelled, the call for `model`."""
    await asyncio.wait_for(events.setdefault(model, asyncio.Event()).wait(), 5)


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_answers_and_rich_errors_are_those_of_a_unary_call(served: tuple[Probe, int, grpc.aio.Server]) -> None:
    _, port, _ = served
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        resp = await stub.Route(pb.RouteRequest(requested_model="x", quality_bias=0.25))
        assert (resp.reason, resp.strong_probability) == ("echo x", 0.25)
        assert [m.id for m in (await stub.ListModels(pb.ListModelsRequest())).models] == ["m1"]

        err = parse_rpc_error(await _error(stub.Route(pb.RouteRequest(requested_model="bad"))))
        assert (err.code, err.message, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "model is bad",
                                                      "INVALID_ARGUMENT")
        assert err.field_violations == [("requested_model", "must not be 'bad'")]
        err = parse_rpc_error(await _error(stub.Route(pb.RouteRequest(requested_model="busy"))))
        assert (err.code, err.reason, err.metadata, err.retry_after_s) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", {"limit": "10"}, 2.5)
        exc = await _error(stub.Route(pb.RouteRequest(requested_model="bug")))
        assert exc.code() == grpc.StatusCode.INTERNAL and "secret" not in (exc.details() or "")
        exc = await _error(stub.Route(pb.RouteRequest(requested_model="timeout"), timeout=10))
        assert exc.code() == grpc.StatusCode.INTERNAL, "the handler's own TimeoutError is not the caller's deadline"
        exc = await _error(mux.call("/weir.router.v1.RouterService/Nope", b""))
        assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
        err = parse_rpc_error(await _error(mux.call("/weir.router.v1.RouterService/Route", b"\xff\xff\xff")))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        # Still one healthy stream after the failures.
        assert (await stub.Route(pb.RouteRequest(requested_model="y"))).reason == "echo y"


async def test_concurrent_calls_each_get_their_own_answer_and_share_messages(
        served: tuple[Probe, int, grpc.aio.Server]) -> None:
    _, port, _ = served

    def received() -> tuple[float, float]:
        get = metrics.REGISTRY.get_sample_value
        return get("weir_mux_messages_total") or 0.0, get("weir_mux_calls_total") or 0.0

    messages, calls = received()
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        names = [f"m{i}" for i in range(300)]
        got = await asyncio.gather(*(stub.Route(pb.RouteRequest(requested_model=n), timeout=10) for n in names))
        assert [r.reason for r in got] == [f"echo {n}" for n in names]
    assert received()[1] - calls == 300
    assert received()[0] - messages < 100, "calls made while a write was out go in the next message together"


async def test_large_calls_are_split_over_messages_of_at_most_a_few_mib() -> None:
    calls = [pb_mux.Call(id=i, payload=b"x" * (1024 * 1024)) for i in range(10)]
    chunks = list(_chunks(calls))
    assert [c.id for chunk in chunks for c in chunk] == list(range(10)), "order and every call kept"
    assert all(sum(c.ByteSize() for c in chunk) <= MESSAGE_BYTES for chunk in chunks) and len(chunks) >= 3
    huge = pb_mux.Call(id=99, payload=b"y" * (MESSAGE_BYTES + 1))
    assert list(_chunks([huge])) == [[huge]], "one call larger than the cap still goes, alone"


async def test_big_answers_come_back_whole(served: tuple[Probe, int, grpc.aio.Server]) -> None:
    _, port, _ = served
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        models = [f"m{i}-" + "z" * (1024 * 1024) for i in range(8)]  # 8 MiB of requests and answers at once
        got = await asyncio.gather(*(stub.Route(pb.RouteRequest(requested_model=m), timeout=30) for m in models))
        assert [r.reason for r in got] == [f"echo {m}" for m in models]


async def test_a_write_takes_everything_queued_since_the_last_one() -> None:
    box: _Outbox[int] = _Outbox()
    box.put(1)
    box.put(2)
    assert await box.take() == [1, 2]
    waiting = asyncio.ensure_future(box.take())
    await asyncio.sleep(0)
    box.put(3)
    box.put(4)
    assert await waiting == [3, 4]
    box.put(5)
    box.close()
    assert await box.take() == [5], "what was queued before close() is still sent"
    assert await box.take() == []


async def test_the_deadline_fails_the_call_and_cancels_the_handler(
        served: tuple[Probe, int, grpc.aio.Server]) -> None:
    probe, port, _ = served
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        left = float((await stub.Route(pb.RouteRequest(requested_model="left"), timeout=5.0)).reason)
        assert 4.0 < left <= 5.0, "the handler sees the caller's deadline"
        since = time.monotonic()
        exc = await _error(stub.Route(pb.RouteRequest(requested_model="slow:30"), timeout=0.3))
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - since < 5
        await _seen(probe.cancelled, "slow:30")


async def test_a_caller_that_gives_up_cancels_only_its_own_call(served: tuple[Probe, int, grpc.aio.Server]) -> None:
    probe, port, _ = served
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        other = asyncio.ensure_future(stub.Route(pb.RouteRequest(requested_model="slow:0.5"), timeout=10))
        task = asyncio.ensure_future(stub.Route(pb.RouteRequest(requested_model="slow:31"), timeout=60))
        await _seen(probe.started, "slow:31")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _seen(probe.cancelled, "slow:31")
        assert (await other).reason == "echo slow:0.5", "the other call on the stream is unharmed"
        assert (await stub.Route(pb.RouteRequest(requested_model="z"))).reason == "echo z"


async def test_a_client_that_goes_away_cancels_its_open_calls(served: tuple[Probe, int, grpc.aio.Server]) -> None:
    probe, port, _ = served
    mux = MuxChannel(f"127.0.0.1:{port}")
    stub = _stub(mux)
    task = asyncio.ensure_future(stub.Route(pb.RouteRequest(requested_model="slow:32"), timeout=60))
    await _seen(probe.started, "slow:32")
    await mux.close()
    exc = await _error(task)
    assert exc.code() == grpc.StatusCode.CANCELLED
    await _seen(probe.cancelled, "slow:32")


async def test_graceful_stop_answers_accepted_calls_without_waiting_out_its_grace() -> None:
    probe = Probe()
    server, port = await create_server(probe, "127.0.0.1", 0)
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        assert (await stub.Route(pb.RouteRequest(requested_model="a"))).reason == "echo a"
        inflight = asyncio.ensure_future(stub.Route(pb.RouteRequest(requested_model="slow:0.5"), timeout=10))
        await _seen(probe.started, "slow:0.5")
        since = time.monotonic()
        await stop_server(server, probe, 20.0)
        assert time.monotonic() - since < 5, "the open stream must not hold the stop for its whole grace"
        assert (await inflight).reason == "echo slow:0.5"
        exc = await _error(stub.Route(pb.RouteRequest(requested_model="b"), timeout=2))
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        # A server back on the same port: the channel opens a new stream to it.
        server2, _ = await create_server(Probe(), "127.0.0.1", port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert (await stub.Route(pb.RouteRequest(requested_model="c"), timeout=2)).reason == "echo c"
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, err
                    await asyncio.sleep(0.1)
        finally:
            await server2.stop(0)


async def test_calls_are_counted_in_the_server_metrics_by_method_and_code(
        served: tuple[Probe, int, grpc.aio.Server]) -> None:
    _, port, _ = served

    def count(code: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "weir_grpc_server_seconds_count", {"method": "/weir.router.v1.RouterService/Route", "code": code})
        return value or 0.0

    ok, bad = count("OK"), count("INVALID_ARGUMENT")
    async with MuxChannel(f"127.0.0.1:{port}") as mux:
        stub = _stub(mux)
        await stub.Route(pb.RouteRequest(requested_model="x"))
        await _error(stub.Route(pb.RouteRequest(requested_model="bad")))
    assert (count("OK") - ok, count("INVALID_ARGUMENT") - bad) == (1, 1)


async def test_streaming_methods_stay_calls_of_their_own() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    plain = reasoner_grpc.ReasonerServiceStub(channel)
    mux = MuxChannel("127.0.0.1:1")
    stub = mux_stub(plain, reasoner_pb.DESCRIPTOR.services_by_name["ReasonerService"], mux)
    assert stub.StreamComplete is plain.StreamComplete
    assert stub.Complete is not plain.Complete
    await mux.close()
    await channel.close()


async def test_a_server_without_the_mux_service_is_called_with_unary_calls() -> None:
    server = grpc.aio.server()  # an older build: the service alone, no MuxService
    pb_grpc.add_RouterServiceServicer_to_server(Probe(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with MuxChannel(f"127.0.0.1:{port}") as mux:
            stub = _stub(mux)
            assert (await stub.Route(pb.RouteRequest(requested_model="a"), timeout=5)).reason == "echo a"
            assert mux.unsupported
            assert (await stub.Route(pb.RouteRequest(requested_model="b"), timeout=5)).reason == "echo b"
    finally:
        await server.stop(0)


async def test_a_service_that_opts_out_serves_no_mux_stream() -> None:
    class Public(Probe):
        multiplexed = False  # like the gateway, whose calls carry API keys in metadata

    probe = Public()
    server, port = await create_server(probe, "127.0.0.1", 0)
    try:
        async with MuxChannel(f"127.0.0.1:{port}") as mux:
            with pytest.raises(MuxUnsupported):
                await mux.call("/weir.router.v1.RouterService/Route", pb.RouteRequest(requested_model="a")
                               .SerializeToString(), 5)
            # a stub still reaches it, with a gRPC call of its own
            assert (await _stub(mux).Route(pb.RouteRequest(requested_model="a"), timeout=5)).reason == "echo a"
    finally:
        await stop_server(server, probe, 1.0)
