"""GatewayService: the hub's operations for internal gRPC callers (unary and server-streaming)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.gateway.auth import AuthError, KeyStore, Principal, StoreUnavailable, bearer
from services.gateway.hub import Hub
from services.gateway.openai_wire import ApiError
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from weir.kit.errors import WeirError, parse_rpc_error
from weir.router.v1 import router_service_pb2 as router_pb

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
    502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def to_weir_error(err: ApiError) -> WeirError:
    """The REST error as a gRPC status; rate-limit headers travel in the ErrorInfo metadata."""
    headers = err.headers or {}
    retry = float(headers["Retry-After"]) if "Retry-After" in headers else 0.0
    violations = [(err.param, err.message)] if err.param else []
    metadata = {k.lower(): v for k, v in headers.items() if k.lower().startswith(("x-ratelimit-", "x-weir-"))}
    return WeirError(_CODES.get(err.status, grpc.StatusCode.INTERNAL), err.message,
                     reason=(err.code or err.type).upper(), field_violations=violations, retry_after_s=retry,
                     metadata=metadata)


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in headers.items())


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(self, hub: Hub, keys: KeyStore) -> None:
        self.hub = hub
        self.keys = keys

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        md = dict(context.invocation_metadata() or ())
        try:
            return await self.keys.authenticate(bearer(str(md.get("authorization", ""))))
        except StoreUnavailable as exc:
            raise WeirError(grpc.StatusCode.UNAVAILABLE, str(exc), reason="POLICY_UNAVAILABLE",
                            retry_after_s=1.0) from exc
        except AuthError as exc:
            raise WeirError(grpc.StatusCode.UNAUTHENTICATED, str(exc), reason="INVALID_API_KEY") from exc

    @staticmethod
    def _check(req: pb.CreateChatCompletionRequest | pb.StreamChatCompletionRequest) -> None:
        if not req.request.model:
            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, "request.model is required",
                            reason="INVALID_ARGUMENT", field_violations=[("request.model", "required")])
        if not any(m.role == "user" for m in req.request.messages):
            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, "request.messages needs a user message",
                            reason="INVALID_ARGUMENT", field_violations=[("request.messages", "no user message")])

    @staticmethod
    def _key(context: grpc.aio.ServicerContext) -> str:
        md = dict(context.invocation_metadata() or ())
        raw = bearer(str(md.get("authorization", "")))
        if not raw:
            raise WeirError(grpc.StatusCode.UNAUTHENTICATED, "missing API key: send `authorization: Bearer <key>`",
                            reason="INVALID_API_KEY")
        return raw

    async def CreateChatCompletion(self, request: pb.CreateChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> pb.CreateChatCompletionResponse:
        raw_key = self._key(context)
        self._check(request)
        try:
            adm = await self.hub.admit(raw_key, request.request, request.cache_control)
            out = await self.hub.complete(adm, request.request, request.cache_control)
        except ApiError as err:
            raise to_weir_error(err) from err
        if adm.headers:
            await context.send_initial_metadata(_metadata(adm.headers))
        d = out.decision
        return pb.CreateChatCompletionResponse(
            id=d.id, content=out.content, model=out.model, usage=out.usage, finish_reason=out.finish_reason,
            cache=d.tier, route_reason=d.route_reason, cache_reason=d.cache_reason, timings=d.timings.proto(),
            tool_calls_json=out.tool_calls_json, created_unix=d.created)

    async def StreamChatCompletion(self, request: pb.StreamChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        raw_key = self._key(context)
        self._check(request)
        try:
            adm = await self.hub.admit(raw_key, request.request, request.cache_control)
            session = await self.hub.stream(adm, request.request, request.cache_control)
        except ApiError as err:
            raise to_weir_error(err) from err
        try:
            if adm.headers:
                await context.send_initial_metadata(_metadata(adm.headers))
            d = session.decision
            yield pb.StreamChatCompletionResponse(start=pb.StreamStart(
                id=d.id, model=session.model, cache=d.tier, route_reason=d.route_reason,
                cache_reason=d.cache_reason, created_unix=d.created))
            async for ev in session.events:
                if ev.end is not None:
                    yield pb.StreamChatCompletionResponse(end=pb.StreamEnd(
                        model=ev.end.model, usage=ev.end.usage, finish_reason=ev.end.finish_reason,
                        timings=d.timings.proto()))
                    return
                yield pb.StreamChatCompletionResponse(delta=pb.StreamDelta(content=ev.content,
                                                                            reasoning=ev.reasoning))
        except ApiError as err:
            raise to_weir_error(err) from err
        finally:
            await session.aclose()

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        principal = await self._principal(context)
        try:
            listed = await self.hub.router.ListModels(router_pb.ListModelsRequest(), timeout=self.hub.deadlines.route_s)
        except grpc.RpcError as exc:
            err = parse_rpc_error(exc)
            raise WeirError(grpc.StatusCode.UNAVAILABLE, f"router: {err.message}", reason="ROUTER_UNAVAILABLE") from exc
        allowed = set(principal.allowed_models)
        return pb.ListModelsResponse(models=[pb.Model(id=m.id, owned_by=m.provider or "weir")
                                             for m in listed.models if not allowed or m.id in allowed])
