"""The gateway's server span for an HTTP request (REST bridge and jobs API share it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from weir.kit import telemetry
from weir.kit.logging import current_trace_id


@contextlib.contextmanager
def request_trace(request: web.Request, name: str) -> Iterator[str]:
    """A server span continuing the caller's traceparent when tracing is on; yields the trace id."""
    if not telemetry.enabled():
        incoming = request.headers.get("traceparent", "")
        parts = incoming.split("-")
        trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else telemetry.new_trace_id()
        token = current_trace_id.set(trace_id)
        try:
            yield trace_id
        finally:
            current_trace_id.reset(token)
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("weir.gateway")
    ctx = propagate.extract(dict(request.headers))
    with tracer.start_as_current_span(name, context=ctx, kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", request.method)
        span.set_attribute("url.path", request.path)
        yield format(span.get_span_context().trace_id, "032x")
