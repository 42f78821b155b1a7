"""The gRPC server every Weir service runs: grpc.aio with health, reflection, rich errors, graceful stop.

A service module provides a `Service` (its servicers plus start/close hooks) and calls `serve()`::

    def main() -> None:
        settings = load(EmbedderSettings)
        serve(lambda: EmbedderService(settings), settings.server)

`create_server()` builds and starts a server without owning the process (tests use it in-process);
`serve()` owns the process: logging, telemetry, uvloop, SIGTERM/SIGINT, and the ready file that
`weir.kit.supervisor` waits for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from weir.kit import metrics, mux, supervisor, telemetry
from weir.kit.config import Port, env
from weir.kit.errors import WeirError, status_of
from weir.kit.logging import setup_logging
from weir.mux.v1 import mux_service_pb2_grpc

log = logging.getLogger("weir.server")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Servers accept the clients' keepalive pings on idle channels (every 30 s above); gRPC's default (one per
    # 5 minutes, then GOAWAY "too_many_pings") would drop every idle channel between services after ~90 s.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ServerSettings:
    """Where and how a service listens (each service gives its own defaults)."""

    host: str = env("WEIR_HOST", "127.0.0.1", help="interface to bind")
    log_level: str = env("WEIR_LOG_LEVEL", "info", help="debug, info, warning or error (JSON lines on stderr)")
    grace_s: float = env("WEIR_SHUTDOWN_GRACE_S", 5.0, help="seconds in-flight calls get on SIGTERM")
    ready_file: Path | None = env("WEIR_READY_FILE", None, help="written with the bound address once serving")
    metrics_port: Port | None = env("WEIR_METRICS_PORT", None, help="Prometheus /metrics port (0 = any free port)")
    reuse_port: bool = env("WEIR_REUSE_PORT", False,
                           help="let several processes of this service share its ports (SO_REUSEPORT: the kernel "
                                "spreads connections over them); off, a taken port is an error")


class Service(Protocol):
    """One deployable service: gRPC servicers plus resources opened before serving and closed after. A service
    may set `multiplexed = False` to keep its unary methods off `weir.mux.v1.MuxService` (calls on the stream
    carry no metadata: the gateway's API keys travel in it)."""

    #: Full names of the gRPC services registered, for health and reflection.
    service_names: tuple[str, ...]

    async def start(self) -> None: ...

    def register(self, server: grpc.aio.Server) -> None: ...

    async def close(self) -> None: ...


class _ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns WeirError into a google.rpc.Status with details and any other exception into INTERNAL."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or method.startswith("/grpc."):
            return handler
        wrapped = _wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    from grpc_status import rpc_status

    async def fail(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(rpc_status.to_status(status_of(exc, method)))

    def record(since: float, context: grpc.aio.ServicerContext) -> None:
        code = context.code()
        metrics.observe_call(method, code.name if isinstance(code, grpc.StatusCode) else "OK", since)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            since = time.perf_counter()
            try:
                return await inner_uu(request, context)  # type: ignore[arg-type]
            except (WeirError, Exception) as exc:
                if isinstance(exc, asyncio.CancelledError) or _is_abort(exc):
                    raise
                await fail(exc, context)
            finally:
                record(since, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            since = time.perf_counter()
            try:
                async for item in inner_us(request, context):  # type: ignore[arg-type,attr-defined]
                    yield item
            except (WeirError, Exception) as exc:
                if isinstance(exc, asyncio.CancelledError) or _is_abort(exc):
                    raise
                await fail(exc, context)
            finally:
                record(since, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio signals context.abort() with an internal exception type; let it through untouched.
    return type(exc).__name__ == "AbortError"


async def create_server(service: Service, host: str = "127.0.0.1", port: int = 0,
                        reuse_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """Starts `service` on host:port (0 picks a free port) with health and reflection; returns (server, port).
    `reuse_port`: other processes may serve the same port (SO_REUSEPORT)."""
    interceptors = [*telemetry.server_interceptors(), _ErrorInterceptor()]
    options = [(k, int(reuse_port) if k == "grpc.so_reuseport" else v) for k, v in GRPC_OPTIONS]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    names = service.service_names
    multiplexed: mux.MuxServicer | None = None
    if getattr(service, "multiplexed", True):  # a service whose calls need metadata opts out
        multiplexed = mux.MuxServicer()
        service.register(_Registrar(server, multiplexed))  # type: ignore[arg-type]
        mux_service_pb2_grpc.add_MuxServiceServicer_to_server(multiplexed, server)
        names = (*names, mux.SERVICE_NAME)
    else:
        service.register(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await service.start()
    await server.start()
    for name in ("", *service.service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    server._weir_health = health  # type: ignore[attr-defined]
    server._weir_mux = multiplexed  # type: ignore[attr-defined]
    return server, bound


class _Registrar:
    """The server as a service's `register()` sees it: its unary methods are also served on MuxService."""

    def __init__(self, server: grpc.aio.Server, multiplexed: mux.MuxServicer) -> None:
        self._server = server
        self._mux = multiplexed

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._mux.add(service, handlers)
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


async def stop_server(server: grpc.aio.Server, service: Service, grace_s: float) -> None:
    """Marks the server NOT_SERVING, lets in-flight calls finish within `grace_s` (calls on mux streams
    included: the streams end once their calls are answered), then closes resources."""
    health = getattr(server, "_weir_health", None)
    if health is not None:
        await health.enter_graceful_shutdown()
    multiplexed: mux.MuxServicer | None = getattr(server, "_weir_mux", None)
    if multiplexed is not None:
        await asyncio.gather(multiplexed.drain(grace_s), server.stop(grace_s))
    else:
        await server.stop(grace_s)
    await service.close()


def write_ready_file(path: Path | None, **info: Any) -> None:
    """Atomically writes {"pid": ..., **info} as JSON to `path` (the supervisor's start signal)."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **info}))
    tmp.replace(path)


def install_event_loop() -> None:
    """Uses uvloop when available (WEIR_UVLOOP=0 turns it off)."""
    if os.environ.get("WEIR_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


PARENT_POLL_S = 0.5


async def wait_for_stop_signal() -> None:
    """Returns on SIGTERM or SIGINT, or once the launcher named by WEIR_STOP_WITH_PARENT has exited (a process
    started by `weir up`, a test or a benchmark never outlives it, even when the launcher was killed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = loop.create_task(_watch_parent(stop))
    try:
        await stop.wait()
    finally:
        watch.cancel()


def _launcher_from_env() -> int | None:
    raw = os.environ.get(supervisor.PARENT_ENV, "")
    if not (raw.isascii() and raw.isdigit()):
        return None
    pid = int(raw)
    if os.getppid() == pid or not supervisor.process_running(pid):
        # The launcher, or a launcher that died before this module loaded: this process is already reparented.
        return pid
    return None  # alive and not this process' parent: the variable was inherited from a grandparent


#: Read when this module loads, early in the process' life, while the launcher still waits for it to be ready
#: (read later, a launcher killed in between could not be told from a variable inherited from a grandparent
#: whose pid was reused).
_LAUNCHER = _launcher_from_env()


def launcher_gone() -> bool:
    """Whether the launcher this process must not outlive (WEIR_STOP_WITH_PARENT, when it was this process' parent
    at start, or was already gone then) has exited: this process has been reparented. Always False when not
    started by the supervisor, or when the variable was inherited from a grandparent that is still running."""
    return _LAUNCHER is not None and os.getppid() != _LAUNCHER


async def _watch_parent(stop: asyncio.Event) -> None:
    if _LAUNCHER is None:
        return
    while not stop.is_set():
        if launcher_gone():
            log.warning("the launcher is gone: stopping", extra={"launcher_pid": _LAUNCHER})
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_S)


def run_process(name: str, settings: ServerSettings, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Common process wrapper: JSON logs, telemetry, event loop; `main` runs until a stop signal."""
    setup_logging(name, settings.log_level)
    telemetry.setup_telemetry(name)
    install_event_loop()
    try:
        asyncio.run(main())
    finally:
        telemetry.shutdown_telemetry()


def serve(name: str, factory: Callable[[], Service], settings: ServerSettings, port: int) -> None:
    """Runs one gRPC service as this process until SIGTERM/SIGINT."""

    async def main() -> None:
        service = factory()
        server, bound = await create_server(service, settings.host, port, settings.reuse_port)
        address = f"{settings.host}:{bound}"
        info: dict[str, Any] = getattr(service, "ready_info", dict)()  # e.g. the gateway's HTTP address
        if settings.metrics_port is not None:
            info["metrics"] = f"{settings.host}:{metrics.serve_metrics(settings.host, settings.metrics_port)}"
        write_ready_file(settings.ready_file, grpc=address, **info)
        log.info("serving", extra={"address": address, "services": list(service.service_names)})
        await wait_for_stop_signal()
        log.info("stopping", extra={"grace_s": settings.grace_s})
        await stop_server(server, service, settings.grace_s)

    run_process(name, settings, main)
