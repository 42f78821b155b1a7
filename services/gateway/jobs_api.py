"""REST API of background jobs (any key; a key sees only its own jobs, the admin key sees all).

    POST   /v1/jobs                 body as /v1/chat/completions, plus optional `webhook_url`, `metadata` (an
                                    object of strings) and `preview` (bool; or header `x-weir-preview: on`)
                                    -> 202 {id, status: "queued", ...}
    GET    /v1/jobs/stats           mean time per hop of the workers' runs, queue length (any key)
    GET    /v1/jobs/{id}            status, result, usage and cost, error, timings, webhook delivery
    GET    /v1/jobs/{id}/events     the event log as SSE (`id:` = event id); resumes after `Last-Event-ID`
                                    (header) or `?after=`; ends after the final event
    DELETE /v1/jobs/{id}            cancels: a queued job never runs, a running one stops between deltas
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from services.gateway import webhooks
from services.gateway.auth import Principal
from services.gateway.jobs import FINAL, JobStore
from services.gateway.openai_wire import ApiError, parse_chat_request
from services.gateway.tracing import request_trace
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb

log = logging.getLogger("weir.gateway.jobs")

Authenticate = Callable[[web.Request], Awaitable[Principal]]
CacheControlOf = Callable[[Any], gateway_pb.CacheControl]
EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}", re.ASCII)  # a Redis stream id; matched whole (fullmatch)
_METADATA_MAX = 16


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers)


def job_options(body: dict[str, Any], private_networks: bool) -> tuple[str, dict[str, str]]:
    """Takes the job-only fields out of a request body: (webhook_url, metadata)."""
    url = body.pop("webhook_url", None) or ""
    if not isinstance(url, str) or (url and (urlsplit(url).scheme not in ("http", "https")
                                             or not urlsplit(url).netloc)):
        raise ApiError(400, "'webhook_url' must be an http(s) URL", param="webhook_url", code="invalid_value")
    if url and (refused := webhooks.refusal(url, private_networks)) is not None:
        raise ApiError(400, f"'webhook_url': {refused}", param="webhook_url", code="invalid_value")
    metadata = body.pop("metadata", None) or {}
    if (not isinstance(metadata, dict) or len(metadata) > _METADATA_MAX
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                       for k, v in metadata.items())):
        raise ApiError(400, f"'metadata' must be an object of at most {_METADATA_MAX} string values",
                       param="metadata", code="invalid_value")
    return url, metadata


class JobsApi:
    def __init__(self, store: JobStore, authenticate: Authenticate, cache_control: CacheControlOf) -> None:
        self.store = store
        self.authenticate = authenticate
        self.cache_control = cache_control

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/jobs", self.submit)
        app.router.add_get("/v1/jobs/stats", self.stats)
        app.router.add_get("/v1/jobs/{job_id}", self.get)
        app.router.add_get("/v1/jobs/{job_id}/events", self.events)
        app.router.add_delete("/v1/jobs/{job_id}", self.cancel)

    async def _own(self, request: web.Request) -> tuple[str, dict[str, bytes], Principal]:
        principal = await self.authenticate(request)
        job_id = request.match_info["job_id"]
        doc = await self.store.load(job_id)
        if doc is None or not (principal.admin or doc.get("key_id", b"").decode() == principal.key_id):
            raise ApiError(404, f"no job {job_id!r}", type="not_found_error", code="job_not_found")
        return job_id, doc, principal

    async def submit(self, request: web.Request) -> web.Response:
        with request_trace(request, "POST /v1/jobs") as trace_id:
            resp = await self._submit(request)
            resp.headers["x-weir-trace-id"] = trace_id
            return resp

    async def _submit(self, request: web.Request) -> web.Response:
        principal = await self.authenticate(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        webhook_url, metadata = job_options(body, self.store.webhook_private_networks)
        body.pop("stream", None)
        body.pop("stream_options", None)
        preview = body.pop("preview", False)
        if not isinstance(preview, bool):
            raise ApiError(400, "'preview' must be a boolean", param="preview", code="invalid_type")
        req, _ = parse_chat_request(orjson.dumps(body))
        control = self.cache_control(request.headers)
        control.preview = preview or request.headers.get("x-weir-preview", "").lower() == "on"
        job_id = await self.store.submit(principal, req, control,
                                         webhook_url=webhook_url, metadata=metadata)
        view = {"id": job_id, "object": "job", "status": "queued", "model": req.model, "metadata": metadata,
                "links": {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"}}
        return _json(view, 202, headers={"Location": f"/v1/jobs/{job_id}"})

    async def stats(self, request: web.Request) -> web.Response:
        await self.authenticate(request)
        return _json(await self.store.stats())

    async def get(self, request: web.Request) -> web.Response:
        job_id, doc, _ = await self._own(request)
        return _json(JobStore.view(job_id, doc))

    async def cancel(self, request: web.Request) -> web.Response:
        job_id, doc, _ = await self._own(request)
        status = await self.store.cancel(job_id)
        if status in FINAL and status != "cancelled" and doc.get("status", b"").decode() in FINAL:
            raise ApiError(409, f"job {job_id} already finished ({status})", code="job_finished")
        fresh = await self.store.load(job_id) or doc
        return _json(JobStore.view(job_id, fresh))

    async def events(self, request: web.Request) -> web.StreamResponse:
        job_id, _, _ = await self._own(request)
        after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        if after and not EVENT_ID.fullmatch(after):
            raise ApiError(400, "Last-Event-ID must be an event id like 1700000000000-0", param="Last-Event-ID",
                           code="invalid_value")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            async with aclosing(self.store.events(job_id, after)) as events:
                async for ev in events:
                    await resp.write(b": keep-alive\n\n" if ev is None else ev.sse())
        except ConnectionResetError:  # the client stopped listening; the job goes on
            log.info("client disconnected from job events", extra={"job_id": job_id})
        return resp
