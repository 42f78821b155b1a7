"""OpenTelemetry wiring from the standard OTEL_* variables.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and
OTEL_SDK_DISABLED is not true; then spans go to that OTLP/gRPC endpoint in batches. When it is off,
nothing is instrumented, so the hot path pays nothing for it.
"""

from __future__ import annotations

import os
import secrets
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

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
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
