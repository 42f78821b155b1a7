"""Integration: one request through the whole mesh produces ONE trace with every hop, correctly parented,
exported over OTLP to a receiver this test starts (built from opentelemetry-proto's gRPC service)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from weir.devmesh import Mesh, start_mesh
from weir.kit import semconv as sc
from weir.kit.redis_local import LocalRedis

pytestmark = pytest.mark.integration


@dataclass
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs: dict[str, Any] = {}
                        for a in s.attributes:
                            v = a.value
                            kind = v.WhichOneof("value")
                            attrs[a.key] = ([x.string_value for x in v.array_value.values] if kind == "array_value"
                                            else getattr(v, kind) if kind else None)
                        self.spans.append(Span(service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                               s.parent_span_id.hex(), attrs))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: Path,
                receiver: tuple[Receiver, int]) -> Iterator[Mesh]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "WEIR_CACHE_REDIS_PREFIX": "weir-trace-test:",
           "WEIR_REDIS_PREFIX": "weir-trace-test:"}  # its own keys, limits and jobs queue
    m = start_mesh(tmp_path_factory.mktemp("traced"), redis_server.url, env)
    yield m
    m.stop()


INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind values

# One row per hop of a cache miss: (service, span name, kind, (parent service, parent span name) or None for root).
MISS_HOPS: list[tuple[str, str, int, tuple[str, str] | None]] = [
    ("weir-gateway", "POST /v1/chat/completions", SERVER, None),
    # The gateway reads the exact tier from Redis itself (services/gateway/exact_reader.py).
    ("weir-gateway", "cache exact lookup", INTERNAL, ("weir-gateway", "POST /v1/chat/completions")),
    *[row for svc, method in (("embedder", "weir.embedder.v1.EmbedderService/Embed"),
                              ("cache", "weir.cache.v1.CacheService/LookupSemantic"),
                              ("router", "weir.router.v1.RouterService/Route"),
                              ("reasoner", "weir.reasoner.v1.ReasonerService/Complete"),
                              ("cache", "weir.cache.v1.CacheService/Store"))
      for row in (("weir-gateway", f"/{method}", CLIENT, ("weir-gateway", "POST /v1/chat/completions")),
                  (f"weir-{svc}", f"/{method}", SERVER, ("weir-gateway", f"/{method}")))],
    ("weir-reasoner", "chat fake-small", CLIENT, ("weir-reasoner", "/weir.reasoner.v1.ReasonerService/Complete")),
]


def _trace(rec: Receiver, trace_id: str, want: int, timeout: float = 15.0) -> list[Span]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rec.lock:
            spans = [s for s in rec.spans if s.trace_id == trace_id]
        if len(spans) >= want and {(s.service, s.name) for s in spans} >= {(h[0], h[1]) for h in MISS_HOPS}:
            return spans
        time.sleep(0.1)
    return spans


def test_one_trace_covers_every_hop(traced_mesh: Mesh, receiver: tuple[Receiver, int]) -> None:
    rec, _ = receiver
    auth = {"Authorization": f"Bearer {traced_mesh.master_key}"}
    # An earlier answer in the same (single-turn) context, so that the traced miss searches the semantic tier
    # (the gateway skips the search in a context with nothing stored).
    seed = {"model": "fake-small", "temperature": 0, "messages": [{"role": "user", "content": "Seed the context"}]}
    deadline = time.monotonic() + 30
    while httpx.post(f"{traced_mesh.base_url}/chat/completions", headers=auth, json=seed).headers.get(
            "x-weir-cache") != "exact":
        assert time.monotonic() < deadline, "the seed answer was never stored"
        time.sleep(0.2)
    r = httpx.post(f"{traced_mesh.base_url}/chat/completions", headers=auth,
                   json={"model": "fake-small", "temperature": 0,
                         "messages": [{"role": "user", "content": "Trace me through every hop, please"}]})
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-weir-trace-id"]
    spans = _trace(rec, trace_id, len(MISS_HOPS))
    by_id = {s.span_id: s for s in spans}
    seen = {(s.service, s.name): s for s in spans}
    missing = [(h[0], h[1]) for h in MISS_HOPS if (h[0], h[1]) not in seen]
    assert not missing, f"hops missing from trace {trace_id}: {missing}; got {sorted(seen)}"
    for service, name, kind, parent in MISS_HOPS:
        span = seen[(service, name)]
        assert span.kind == kind, (service, name, span.kind)
        if parent is None:
            assert span.parent_id == "", f"{name} should be the root"
        else:
            got = by_id.get(span.parent_id)
            assert got is not None and (got.service, got.name) == parent, (service, name, got)
    # Every span of the request is in this one trace, and no health check was traced.
    assert not [s for s in rec.spans if "Health" in s.name]
    # GenAI semantic conventions on the provider call, Weir's attributes on the hops.
    call = seen[("weir-reasoner", "chat fake-small")].attributes
    assert call[sc.GEN_AI_OPERATION_NAME] == "chat" and call[sc.GEN_AI_REQUEST_MODEL] == "fake-small"
    assert call[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0 and call[sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    assert call[sc.GEN_AI_PROVIDER_NAME] == "openai"
    gw = seen[("weir-gateway", "POST /v1/chat/completions")].attributes
    assert gw[sc.GEN_AI_REQUEST_MODEL] == "fake-small" and gw[sc.GEN_AI_RESPONSE_MODEL] == "fake-small"
    assert gw[sc.WEIR_CACHE_TIER] == "miss" and gw[sc.WEIR_TENANT] and gw[sc.WEIR_KEY_ID]
    assert gw[sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    search = seen.get(("weir-cache", "milvus search"))
    assert search is not None and by_id[search.parent_id].name == "/weir.cache.v1.CacheService/LookupSemantic"
    sem = seen[("weir-cache", "/weir.cache.v1.CacheService/LookupSemantic")].attributes
    assert sem[sc.WEIR_CACHE_TIER] == "miss" and sem[sc.WEIR_CACHE_REASON]
    route = seen[("weir-router", "/weir.router.v1.RouterService/Route")].attributes
    assert route[sc.WEIR_ROUTE_MODEL] == "fake-small" and route[sc.WEIR_ROUTE_REASON]
    # Redis calls are traced, sanitised (no keys or values).
    redis_spans = [s for s in spans if s.attributes.get("db.system") == "redis"
                   or s.attributes.get("db.system.name") == "redis"]
    assert redis_spans, "Redis calls should appear in the trace"
    for s in redis_spans:
        stmt = str(s.attributes.get("db.statement", s.attributes.get("db.query.text", "")))
        assert traced_mesh.master_key not in stmt and "Trace me" not in stmt


def test_a_background_job_joins_the_trace_that_submitted_it(traced_mesh: Mesh,
                                                            receiver: tuple[Receiver, int]) -> None:
    rec, _ = receiver
    r = httpx.post(f"{traced_mesh.base_url}/jobs", headers={"Authorization": f"Bearer {traced_mesh.master_key}"},
                   json={"model": "fake-small", "messages": [{"role": "user", "content": "A job to trace"}]})
    assert r.status_code == 202, r.text
    trace_id, job_id = r.headers["x-weir-trace-id"], r.json()["id"]
    status = ""
    deadline = time.monotonic() + 60  # a loaded machine can be slow; the job must end all the same
    while time.monotonic() < deadline and status not in ("succeeded", "failed", "cancelled", "dead_letter"):
        status = httpx.get(f"{traced_mesh.base_url}/jobs/{job_id}",
                           headers={"Authorization": f"Bearer {traced_mesh.master_key}"}).json()["status"]
        time.sleep(0.1)
    assert status == "succeeded", status
    deadline = time.monotonic() + 30  # spans arrive in batches after the job ends
    while time.monotonic() < deadline:
        with rec.lock:
            spans = [s for s in rec.spans if s.trace_id == trace_id]
        names = {(s.service, s.name) for s in spans}
        if {("weir-worker", "job run"), ("weir-worker", "/weir.router.v1.RouterService/Route"),
                ("weir-reasoner", "chat fake-small")} <= names:
            break
        time.sleep(0.1)
    by_id = {s.span_id: s for s in spans}
    runs = [s for s in spans if s.name == "job run"]
    assert runs, f"no 'job run' span in trace {trace_id}; got {sorted(names)}"
    run = runs[0]
    assert by_id[run.parent_id].name == "POST /v1/jobs", "the worker's run continues the submitting request"
    # The run's hops are in the submitting trace: routing from the worker, the reasoner's call to the provider.
    route = next((s for s in spans if s.service == "weir-worker"
                  and s.name == "/weir.router.v1.RouterService/Route"), None)
    assert route is not None and by_id[route.parent_id].name == "job run", sorted(names)
    assert ("weir-reasoner", "chat fake-small") in names, sorted(names)
