"""OpenTelemetry wiring from the standard OTEL_* variables.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and
OTEL_SDK_DISABLED is not true; then spans go to that OTLP/gRPC endpoint in batches. When it is off,
nothing is instrumented, so the hot path pays nothing for it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

_enabled = False


def tracing_configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_telemetry(service: str) -> bool:
    """Installs a tracer provider exporting over OTLP when configured; returns whether tracing is on."""
    global _enabled
    if _enabled or not tracing_configured():
        return _enabled
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"weir-{service}")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Redis calls (exact cache tier, keys, limits) as client spans; command arguments (keys, values) are not
    # recorded, so no API key or cached answer reaches a trace.
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().instrument(tracer_provider=provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def shutdown_telemetry() -> None:
    if not _enabled:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def server_interceptors() -> list[Any]:
    """gRPC server interceptors that continue the caller's trace (none when tracing is off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.instrumentation.grpc.filters import health_check, negate

    return [aio_server_interceptor(filter_=negate(health_check()))]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """gRPC client interceptors that propagate the trace context (none when tracing is off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def new_trace_id() -> str:
    """A W3C trace id for requests handled while tracing is off."""
    return secrets.token_hex(16)


def set_attributes(attributes: dict[str, Any]) -> None:
    """Adds attributes to the current span (the gRPC server span inside a servicer); no-op when tracing is off."""
    if not _enabled:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({k: v for k, v in attributes.items() if v is not None})


class ClientSpan:
    """A span for a call this process makes (a provider, Milvus, an ONNX run) that is NOT made current, so it is
    safe across `yield` in async generators. A no-op object when tracing is off."""

    __slots__ = ("_span",)

    def __init__(self, name: str, attributes: dict[str, Any] | None = None, kind: str = "client") -> None:
        self._span: Any = None
        if not _enabled:
            return
        from opentelemetry import trace

        span_kind = {"client": trace.SpanKind.CLIENT, "internal": trace.SpanKind.INTERNAL}[kind]
        self._span = trace.get_tracer("weir").start_span(
            name, kind=span_kind, attributes={k: v for k, v in (attributes or {}).items() if v is not None})

    def set(self, attributes: dict[str, Any]) -> None:
        if self._span is not None:
            self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def end(self, error: str | None = None) -> None:
        if self._span is None:
            return
        if error:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", error)
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()
        self._span = None


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when tracing is off), to hand work to another process."""
    if not _enabled:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def continue_trace(name: str, traceparent: str, attributes: dict[str, Any] | None = None) -> Iterator[None]:
    """Runs the block in a consumer span whose parent is `traceparent` (work handed over by another process,
    e.g. a background job joined to the request that submitted it). A no-op when tracing is off."""
    if not _enabled:
        yield
        return
    from opentelemetry import propagate, trace

    ctx = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with trace.get_tracer("weir").start_as_current_span(
            name, context=ctx, kind=trace.SpanKind.CONSUMER,
            attributes={k: v for k, v in (attributes or {}).items() if v is not None}):
        yield
