"""GatewayService: the hub's operations for internal gRPC callers (unary and server-streaming)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson

from services.gateway.auth import AuthError, KeyStore, Principal, StoreUnavailable, bearer
from services.gateway.hub import Hub
from services.gateway.jobs import JobStore
from services.gateway.jobs_api import EVENT_ID, job_options
from services.gateway.openai_wire import ApiError
from weir import chat
from weir.common.v1 import types_pb2
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


_JOB_STATUS = {"queued": pb.JOB_STATUS_QUEUED, "running": pb.JOB_STATUS_RUNNING,
               "succeeded": pb.JOB_STATUS_SUCCEEDED, "failed": pb.JOB_STATUS_FAILED,
               "cancelled": pb.JOB_STATUS_CANCELLED, "dead_letter": pb.JOB_STATUS_DEAD_LETTER}


def job_proto(view: dict[str, Any]) -> pb.Job:
    """A job as the REST API shows it (JobStore.view), as the gRPC message."""
    job = pb.Job(id=view["id"], status=_JOB_STATUS.get(view["status"], pb.JOB_STATUS_UNSPECIFIED),
                 model=view["model"], created_unix=view["created"] or 0.0, started_unix=view["started_at"] or 0.0,
                 finished_unix=view["finished_at"] or 0.0, attempts=view["attempts"], metadata=view["metadata"],
                 cancel_requested=view["cancel_requested"])
    if (r := view.get("result")) is not None:
        u = r["usage"]
        job.result.CopyFrom(pb.JobResult(
            content=r["content"], reasoning=r["reasoning"], model=r["model"], finish_reason=r["finish_reason"],
            usage=types_pb2.Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"],
                                  total_tokens=u["total_tokens"]),
            cost_usd=r["cost_usd"], cache=r["cache"], cache_reason=r["cache_reason"], route_reason=r["route_reason"]))
    if (e := view.get("error")) is not None:
        job.error.CopyFrom(pb.JobError(status=e.get("status") or 0, code=e.get("code") or "",
                                       message=e.get("message") or ""))
    return job


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(self, hub: Hub, keys: KeyStore, jobs: JobStore | None = None) -> None:
        self.hub = hub
        self.keys = keys
        self.jobs = jobs

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
    def _check(req: pb.CreateChatCompletionRequest | pb.StreamChatCompletionRequest | pb.SubmitJobRequest) -> None:
        if not req.request.model:
            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, "request.model is required",
                            reason="INVALID_ARGUMENT", field_violations=[("request.model", "required")])
        if bad := chat.violations(req.request):
            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, "invalid chat request", reason="INVALID_ARGUMENT",
                            field_violations=bad)

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
                if ev.attempt is not None:
                    continue
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

    # ---- background jobs -------------------------------------------------------------------------

    def _store(self) -> JobStore:
        if self.jobs is None:
            raise WeirError(grpc.StatusCode.UNIMPLEMENTED, "background jobs are not enabled on this gateway",
                            reason="JOBS_DISABLED")
        return self.jobs

    async def _own_job(self, job_id: str, context: grpc.aio.ServicerContext) -> tuple[JobStore, dict[str, bytes]]:
        store = self._store()
        principal = await self._principal(context)
        doc = await store.load(job_id)
        if doc is None or not (principal.admin or doc.get("key_id", b"").decode() == principal.key_id):
            raise WeirError(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}", reason="JOB_NOT_FOUND",
                            field_violations=[("id", "no such job")])
        return store, doc

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.SubmitJobResponse:
        store = self._store()
        principal = await self._principal(context)
        self._check(request)
        try:
            webhook_url, metadata = job_options({"webhook_url": request.webhook_url,
                                                 "metadata": dict(request.metadata)}, store.webhook_private_networks)
        except ApiError as err:
            raise to_weir_error(err) from err
        job_id = await store.submit(principal, request.request, request.cache_control, webhook_url=webhook_url,
                                    metadata=metadata)
        return pb.SubmitJobResponse(id=job_id)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        _, doc = await self._own_job(request.id, context)
        return pb.GetJobResponse(job=job_proto(JobStore.view(request.id, doc)))

    async def CancelJob(self, request: pb.CancelJobRequest,
                        context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        store, doc = await self._own_job(request.id, context)
        status = await store.cancel(request.id)
        if status != "cancelled" and doc.get("status", b"").decode() in ("succeeded", "failed", "dead_letter"):
            raise WeirError(grpc.StatusCode.FAILED_PRECONDITION, f"job {request.id} already finished ({status})",
                            reason="JOB_FINISHED")
        return pb.CancelJobResponse(job=job_proto(JobStore.view(request.id, await store.load(request.id) or doc)))

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchJobResponse]:
        store, _ = await self._own_job(request.id, context)
        if request.after_event_id and not EVENT_ID.fullmatch(request.after_event_id):
            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, "after_event_id must be an event id like 1700000000000-0",
                            reason="INVALID_ARGUMENT", field_violations=[("after_event_id", "not an event id")])
        async for ev in store.events(request.id, request.after_event_id):
            if ev is not None:
                yield pb.WatchJobResponse(event=pb.JobEvent(id=ev.id, type=ev.type, data_json=orjson.dumps(
                    ev.data).decode()))
