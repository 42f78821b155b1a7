"""GatewayService over gRPC: the same operations for internal callers."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import httpx
import pytest

from weir.common.v1 import types_pb2
from weir.devmesh import Mesh
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from weir.kit.errors import parse_rpc_error


def _request(text: str, model: str = "fake-small") -> types_pb2.ChatRequest:
    req = types_pb2.ChatRequest(model=model, messages=[types_pb2.ChatMessage(role="user", content=text)])
    req.sampling.temperature = 0
    return req


async def test_unary_and_stream(mesh: Mesh) -> None:
    md = (("authorization", f"Bearer {mesh.master_key}"),)
    async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        req = _request(f"Tell me about owls {uuid.uuid4()}")
        resp = await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=req), metadata=md)
        assert resp.content and resp.model == "fake-small"
        assert resp.cache == types_pb2.CACHE_TIER_MISS
        hops = {t.hop for t in resp.timings}
        assert hops >= {"cache", "route", "upstream", "total"}
        # The answer waits for the embedding only where a semantic search runs (its context holds entries).
        assert ("embed" in hops) == (resp.cache_reason != "miss: nothing stored in this conversation context")
        events = [ev async for ev in stub.StreamChatCompletion(
            pb.StreamChatCompletionRequest(request=req, cache_control=pb.CacheControl(no_cache=True)), metadata=md)]
        kinds = [ev.WhichOneof("event") for ev in events]
        assert kinds[0] == "start" and kinds[-1] == "end" and "delta" in kinds
        assert "".join(ev.delta.content for ev in events if ev.HasField("delta")) == resp.content
        models = await stub.ListModels(pb.ListModelsRequest(), metadata=md)
        assert "auto" in [m.id for m in models.models]


async def test_unauthenticated_and_invalid(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=_request("hi")),
                                            metadata=(("authorization", "Bearer nope"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert parse_rpc_error(info.value).reason == "INVALID_API_KEY"
        md = (("authorization", f"Bearer {mesh.master_key}"),)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=types_pb2.ChatRequest(model="x")),
                                            metadata=md)
        err = parse_rpc_error(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field_violations
        # the same checks as the REST bridge's: sampling ranges, roles, JSON fields (found by fuzzing)
        bad = _request("hi")
        bad.sampling.temperature, bad.tools_json = 1e30, "junk"
        bad.messages.add(role="robot", content="x")
        for call in (stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=bad), metadata=md),
                     stub.SubmitJob(pb.SubmitJobRequest(request=bad), metadata=md)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            err = parse_rpc_error(info.value)
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in err.field_violations] == [
                "request.messages[1].role", "request.tools_json", "request.sampling.temperature"]


async def test_a_cancelled_stream_closes_the_providers_stream(mesh: Mesh) -> None:
    """A gRPC client that cancels mid-stream stops the model call (fake-llm sees its caller hang up long before
    the 24 tokens at 200 ms would end), as a REST client that leaves does."""
    async with httpx.AsyncClient() as http:
        abandoned = (await http.get(f"{mesh.fake_url}/_fake/stats")).json()["streams_abandoned"]
        await http.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:200", "count": 1, "model": "fake-large"})
        async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
            req = _request(f"Tell me about rivers {uuid.uuid4()}", model="fake-large")
            req.sampling.temperature = 0.7
            call = pb_grpc.GatewayServiceStub(ch).StreamChatCompletion(
                pb.StreamChatCompletionRequest(request=req), metadata=(("authorization", f"Bearer {mesh.master_key}"),))
            async for ev in call:
                if ev.WhichOneof("event") == "delta" and ev.delta.content:
                    break
            call.cancel()
        left = time.monotonic()
        while (await http.get(f"{mesh.fake_url}/_fake/stats")).json()["streams_abandoned"] == abandoned:
            assert time.monotonic() - left < 2.5, "the provider's stream was not closed"
            await asyncio.sleep(0.05)
