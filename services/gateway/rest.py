"""The REST bridge: OpenAI's chat-completions API over aiohttp, SSE streaming, health endpoints."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.admin import AdminApi
from services.gateway.auth import AuthError, KeyStore, Principal, StoreUnavailable, bearer
from services.gateway.cache_admin import CacheAdminApi
from services.gateway.hub import Decision, Hub, StreamSession
from services.gateway.jobs import JobStore
from services.gateway.jobs_api import JobsApi
from services.gateway.ledger import UsageReader
from services.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from services.gateway.openai_wire import (
    DONE_SSE,
    ApiError,
    api_error_from_remote,
    chunk_sse,
    completion_json,
    error_sse,
    parse_chat_request,
)
from services.gateway.tracing import request_trace
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb
from weir.kit import semconv as sc
from weir.kit import telemetry
from weir.kit.errors import parse_rpc_error
from weir.router.v1 import router_service_pb2 as router_pb

log = logging.getLogger("weir.gateway.rest")
CONSOLE_DIR = Path(__file__).parent / "console"
_CONSOLE_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
#: The console shows tenants' text (job answers, metadata) to whoever holds a key, the admin included: only its
#: own files may run or load, it may not be framed, and it sends no referrer (its URL never holds the key anyway).
_CONSOLE_SECURITY = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                                "form-action 'self'; object-src 'none'",
                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_UNSAFE = re.compile(r"[^\x20-\x7e]")
_JSON = "application/json"


def _header(value: str) -> str:
    return _UNSAFE.sub("?", value)[:300]


def cache_control(headers: Any) -> gateway_pb.CacheControl:
    """Cache-Control request directives (no-store, no-cache, max-age=N) and Weir's opt-in header."""
    ctl = gateway_pb.CacheControl()
    for directive in headers.get("Cache-Control", "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-store":
            ctl.no_store = True
        elif name == "no-cache":
            ctl.no_cache = True
        elif name in ("max-age", "s-maxage"):
            if not (value.isascii() and value.isdigit()) or int(value) > 10 * 365 * 86400:
                raise ApiError(400, f"Cache-Control {name} must be a number of seconds, got {value!r}",
                               param="Cache-Control")
            ctl.ttl_seconds = int(value)
    if headers.get("x-weir-cache-allow", "").lower() == "nondeterministic":
        ctl.allow_nondeterministic = True
    race = headers.get("x-weir-stream-race", "").strip().lower()
    if race:
        if race not in _RACE:
            raise ApiError(400, f"x-weir-stream-race must be on or off, got {race[:20]!r}", param="x-weir-stream-race")
        ctl.race = _RACE[race]
    return ctl


_RACE = {"on": gateway_pb.UPSTREAM_RACE_ON, "off": gateway_pb.UPSTREAM_RACE_OFF}


def weir_headers(d: Decision, model: str, trace_id: str, server_timing: str) -> dict[str, str]:
    out = {
        "x-weir-cache": d.cache,
        "x-weir-model": model,
        "x-weir-trace-id": trace_id,
        "x-request-id": d.id,
        "Server-Timing": server_timing,
    }
    if d.cache_reason:
        out["x-weir-cache-reason"] = _header(d.cache_reason)
    if d.route_reason:
        out["x-weir-route-reason"] = _header(d.route_reason)
    return out


def _json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return _json_response(err.body(), err.status, err.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        http_err = ApiError(exc.status, exc.reason or "error", type="invalid_request_error", code=code)
        return _json_response(http_err.body(), exc.status)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The client left before the request was read (a prepared stream handles this itself): nobody to answer.
        log.info("client disconnected", extra={"path": request.path})
        return _json_response(ApiError(400, "the client closed the connection").body(), 400)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return _json_response(ApiError(500, "internal error", type="internal_error").body(), 500)


class MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (a header over 8 KiB, a broken request line) at error level
    with a traceback, then answers 400 itself: that is the client's error, so it is logged at info, without the
    traceback, where a flood of them cannot bury the server's own errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = f"malformed HTTP request refused: {exc.message}"[:300], None
            record.exc_info = record.exc_text = None
        return True


MALFORMED_HTTP = MalformedHttpFilter()


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """`Server: weir` instead of aiohttp's, which names the Python and aiohttp versions to every scanner."""
    response.headers["Server"] = "weir"


class RestApi:
    def __init__(self, hub: Hub, keys: KeyStore, redis: Redis, metrics: GatewayMetrics, usage: UsageReader,
                 max_body_bytes: int, jobs: JobStore | None = None) -> None:
        self.hub = hub
        self.keys = keys
        self.redis = redis
        self.metrics = metrics
        self.admin = AdminApi(keys, usage, self._principal)
        self.cache_admin = CacheAdminApi(hub.cache, self._principal, hub.deadlines.cache_s)
        self.max_body_bytes = max_body_bytes
        self.jobs = JobsApi(jobs, self._principal, cache_control) if jobs is not None else None
        self._job_store = jobs

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=self.max_body_bytes)
        app.on_response_prepare.append(_server_header)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        self.admin.routes(app)
        self.cache_admin.routes(app)
        if self.jobs is not None:
            self.jobs.routes(app)
        app.router.add_get("/console", self.console)
        app.router.add_get("/console/{name}", self.console)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def _principal(self, request: web.Request) -> Principal:
        try:
            return await self.keys.authenticate(bearer(request.headers.get("Authorization")))
        except StoreUnavailable as exc:
            raise ApiError(503, str(exc), type="service_unavailable", code="policy_unavailable",
                           headers={"Retry-After": "1"}) from exc
        except AuthError as exc:
            raise ApiError(401, str(exc), type="authentication_error", code="invalid_api_key") from exc

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        with request_trace(request, "POST /v1/chat/completions") as trace_id:
            raw_key = bearer(request.headers.get("Authorization"))
            if not raw_key:
                raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`",
                               type="authentication_error", code="invalid_api_key")
            raw = await request.read()
            req, include_usage = parse_chat_request(raw)
            control = cache_control(request.headers)
            adm = await self.hub.admit(raw_key, req, control)
            telemetry.set_attributes({sc.GEN_AI_OPERATION_NAME: "chat", sc.GEN_AI_REQUEST_MODEL: req.model,
                                      sc.WEIR_TENANT: adm.principal.team, sc.WEIR_KEY_ID: adm.principal.key_id,
                                      sc.WEIR_STREAM: req.stream})
            if not req.stream:
                out = await self.hub.complete(adm, req, control)
                d = out.decision
                telemetry.set_attributes({
                    sc.GEN_AI_RESPONSE_MODEL: out.model, sc.GEN_AI_USAGE_INPUT_TOKENS: out.usage.prompt_tokens,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: out.usage.completion_tokens, sc.WEIR_CACHE_TIER: d.cache,
                    sc.WEIR_CACHE_REASON: d.cache_reason, sc.WEIR_ROUTE_REASON: d.route_reason or None})
                body = completion_json(d.id, d.created, out.model, out.content, out.finish_reason, out.usage,
                                       out.tool_calls_json)
                return _json_response(body, headers={
                    **adm.headers, **weir_headers(d, out.model, trace_id, d.timings.header())})
            session = await self.hub.stream(adm, req, control)
            telemetry.set_attributes({
                sc.GEN_AI_RESPONSE_MODEL: session.model, sc.WEIR_CACHE_TIER: session.decision.cache,
                sc.WEIR_CACHE_REASON: session.decision.cache_reason,
                sc.WEIR_ROUTE_REASON: session.decision.route_reason or None})
            try:
                return await self._relay(request, session, include_usage, adm.headers, trace_id)
            finally:
                await session.aclose()

    async def _relay(self, request: web.Request, session: StreamSession, include_usage: bool,
                     policy_headers: dict[str, str], trace_id: str) -> web.StreamResponse:
        d = session.decision
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
            **policy_headers, **weir_headers(d, session.model, trace_id, d.timings.header())})
        await resp.prepare(request)
        model = session.model
        await resp.write(chunk_sse(d.id, d.created, model, {"role": "assistant", "content": ""}))
        try:
            async for ev in session.events:
                if ev.end is not None:
                    await resp.write(chunk_sse(d.id, d.created, ev.end.model or model, {},
                                               ev.end.finish_reason or "stop"))
                    if include_usage:
                        await resp.write(chunk_sse(d.id, d.created, ev.end.model or model, {},
                                                   usage=ev.end.usage, choices=False))
                    await resp.write(DONE_SSE)
                    break
                delta: dict[str, Any] = {}
                if ev.content:
                    delta["content"] = ev.content
                if ev.reasoning:
                    delta["reasoning_content"] = ev.reasoning
                if ev.tool_calls_json:
                    delta["tool_calls"] = orjson.loads(ev.tool_calls_json)
                if delta:
                    await resp.write(chunk_sse(d.id, d.created, model, delta))
        except ApiError as err:
            # The answer is incomplete: say so and end without [DONE], never pass it off as whole.
            log.warning("stream interrupted", extra={"error": err.message})
            await resp.write(error_sse(err))
        except ConnectionResetError:
            # The client went away mid-stream: nothing to answer; the caller's aclose() cancels the model call.
            log.info("client disconnected mid-stream", extra={"path": request.path})
        return resp

    async def models(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        try:
            listed = await self.hub.router.ListModels(router_pb.ListModelsRequest(),
                                                      timeout=self.hub.deadlines.route_s)
        except grpc.RpcError as exc:
            raise api_error_from_remote(parse_rpc_error(exc), "router") from exc
        allowed = set(principal.allowed_models)
        data = [{"id": m.id, "object": "model", "created": 0, "owned_by": m.provider or "weir"}
                for m in listed.models if not allowed or m.id in allowed]
        return _json_response(orjson.dumps({"object": "list", "data": data}))

    async def console(self, request: web.Request) -> web.Response:
        """The web console's static files (the page asks for a key; every API call it makes needs one)."""
        name = request.match_info.get("name", "index.html")
        path = CONSOLE_DIR / name
        if "/" in name or path.suffix not in _CONSOLE_TYPES or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=await asyncio.to_thread(path.read_bytes), content_type=_CONSOLE_TYPES[path.suffix],
                            headers={"Cache-Control": "no-cache", **_CONSOLE_SECURITY})

    async def prometheus(self, request: web.Request) -> web.Response:
        if self._job_store is not None:
            try:
                queue = (await asyncio.wait_for(self._job_store.stats(), 1.0))["queue"]
                self.metrics.jobs_queue.labels("waiting").set(queue["waiting"])
                self.metrics.jobs_queue.labels("running").set(queue["running"])
            except (RedisError, OSError, TimeoutError):
                pass  # the series keeps its last value; Redis trouble shows in weir_gateway_policy_degraded
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json_response(b'{"status":"ok"}')

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.check_dependencies()
        ok = all(v == "SERVING" for v in checks.values())
        return _json_response(orjson.dumps({"status": "ready" if ok else "unavailable", "checks": checks}),
                              200 if ok else 503)

    async def check_dependencies(self) -> dict[str, str]:
        async def grpc_health(ch: grpc.aio.Channel) -> str:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
            except grpc.RpcError as exc:
                return f"UNAVAILABLE ({exc.code().name.lower()})"

        async def redis_health() -> str:
            try:
                await asyncio.wait_for(self.redis.ping(), 1.0)
                return "SERVING"
            except Exception as exc:
                return f"UNAVAILABLE ({type(exc).__name__})"

        names = list(self.hub.channels)
        results = await asyncio.gather(*(grpc_health(self.hub.channels[n]) for n in names), redis_health())
        return dict(zip([*names, "redis"], results, strict=True))
