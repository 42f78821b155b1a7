"""The service kit with a real server: health, reflection, rich errors, graceful stop."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from weir.kit.errors import WeirError, invalid_argument, parse_rpc_error
from weir.kit.server import create_server, stop_server
from weir.router.v1 import router_service_pb2 as pb
from weir.router.v1 import router_service_pb2_grpc as pb_grpc


class Probe(pb_grpc.RouterServiceServicer):
    service_names: tuple[str, ...] = (pb.DESCRIPTOR.services_by_name["RouterService"].full_name,)
    closed = False

    async def start(self) -> None:
        pass

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RouterServiceServicer_to_server(self, server)

    async def close(self) -> None:
        self.closed = True

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        if request.requested_model == "bad":
            raise invalid_argument("model is bad", ("requested_model", "must not be 'bad'"))
        if request.requested_model == "busy":
            raise WeirError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", reason="RATE_LIMITED",
                            metadata={"limit": "10"}, retry_after_s=2.5)
        if request.requested_model == "bug":
            raise RuntimeError("a bug with a secret inside")
        return pb.RouteResponse(reason="ok")

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()

    async def ReportOutcome(self, request: pb.ReportOutcomeRequest,
                            context: grpc.aio.ServicerContext) -> pb.ReportOutcomeResponse:
        return pb.ReportOutcomeResponse()


async def test_health_reflection_errors_and_graceful_stop() -> None:
    probe = Probe()
    server, port = await create_server(probe, "127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=Probe.service_names[0]))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = [a async for a in refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
        names = {s.name for s in answers[0].list_services_response.service}
        assert Probe.service_names[0] in names and "grpc.health.v1.Health" in names

        stub = pb_grpc.RouterServiceStub(ch)
        assert (await stub.Route(pb.RouteRequest(requested_model="x"))).reason == "ok"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Route(pb.RouteRequest(requested_model="bad"))
        err = parse_rpc_error(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "INVALID_ARGUMENT"
        assert err.field_violations == [("requested_model", "must not be 'bad'")]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Route(pb.RouteRequest(requested_model="busy"))
        err = parse_rpc_error(info.value)
        assert (err.code, err.reason, err.metadata, err.retry_after_s) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", {"limit": "10"}, 2.5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Route(pb.RouteRequest(requested_model="bug"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (info.value.details() or "")

        await stop_server(server, probe, 1.0)
        assert probe.closed
