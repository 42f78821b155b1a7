"""Prometheus metrics of a service process, served on WEIR_METRICS_PORT (off when unset).

The kit records every gRPC call's latency and status; services add their own series to `REGISTRY`
(the reasoner's in-flight upstream calls and tokens, the embedder's queue depth, ...). Label sets stay bounded.
"""

from __future__ import annotations

import time
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, start_http_server


class _ChildrenKept:
    """Keeps a labelled metric's children in a dict once made. prometheus_client's `labels()` checks the label
    names, converts every value and takes a lock on every call (≈ 1.8 µs; a dict lookup ≈ 0.1), and a request
    passes ≈ 20 of them across the mesh. Label sets stay bounded, so the dict does too."""

    _kept: dict[tuple[object, ...], Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept = {}

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Any:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        try:
            return self._kept[labelvalues]
        except KeyError:
            child = self._kept[labelvalues] = super().labels(*labelvalues)  # type: ignore[misc]
            return child

    def remove(self, *labelvalues: object) -> None:
        self._kept.clear()
        super().remove(*labelvalues)  # type: ignore[misc]

    def clear(self) -> None:
        self._kept.clear()
        super().clear()  # type: ignore[misc]


class Counter(_ChildrenKept, prometheus_client.Counter):
    """prometheus_client's Counter whose children are looked up in a dict."""


class Gauge(_ChildrenKept, prometheus_client.Gauge):
    """prometheus_client's Gauge whose children are looked up in a dict."""


class Histogram(_ChildrenKept, prometheus_client.Histogram):
    """prometheus_client's Histogram whose children are looked up in a dict."""


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
