"""Prometheus metrics of a service process, served on WEIR_METRICS_PORT (off when unset).

The kit records every gRPC call's latency and status; services add their own series to `REGISTRY`
(the reasoner's in-flight upstream calls and tokens, the embedder's queue depth, ...). Label sets stay bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GRPC_SERVER_SECONDS = Histogram(
    "weir_grpc_server_seconds", "gRPC calls served, by method and status code", ("method", "code"),
    buckets=BUCKETS, registry=REGISTRY)


def observe_call(method: str, code: str, since: float) -> None:
    """Records one gRPC call served (a unary call or a multiplexed one), begun at perf_counter() `since`."""
    GRPC_SERVER_SECONDS.labels(method, code).observe(time.perf_counter() - since)


def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(name, doc, labels, registry=REGISTRY)


def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, doc, labels, registry=REGISTRY)


def histogram(name: str, doc: str, labels: tuple[str, ...] = (),
              buckets: tuple[float, ...] = BUCKETS) -> Histogram:
    return Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)


def serve_metrics(host: str, port: int) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
