"""Every Prometheus series a service registers is documented in docs/telemetry.md."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import services
from services.gateway.metrics import GatewayMetrics
from weir.kit import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
#: Modules that are tools rather than parts of a running service (evaluation, training, entry points).
NOT_SERVING = (".eval", ".training", ".__main__", ".console", ".build_lexicon")


def test_every_metric_a_service_registers_is_documented() -> None:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if not any(part in module.name for part in NOT_SERVING):
            importlib.import_module(module.name)
    importlib.import_module("weir.kit.mux")
    registries = (metrics.REGISTRY, GatewayMetrics().registry)  # the gateway's own, served on its REST port
    names = {family.name for registry in registries for family in registry.collect() if family.name.startswith("weir_")}
    assert len(names) > 30  # the services' metrics were registered
    doc = DOC.read_text()
    missing = sorted(name for name in names if f"`{name}" not in doc)
    assert not missing, f"metrics missing from {DOC.name}: {missing}"


def test_children_are_kept_after_their_first_use_and_export_as_before() -> None:
    registry = CollectorRegistry()
    requests = metrics.Counter("t_requests", "test", ("status", "tier"), registry=registry)
    seconds = metrics.Histogram("t_seconds", "test", ("hop",), registry=registry)
    child = requests.labels("ok", "miss")
    assert requests.labels("ok", "miss") is child  # from the dict, not made again
    assert requests.labels(status="ok", tier="miss") is child  # keyword labels still reach the same child
    for _ in range(3):
        requests.labels("ok", "miss").inc()
    seconds.labels("policy").observe(0.002)
    assert registry.get_sample_value("t_requests_total", {"status": "ok", "tier": "miss"}) == 3
    assert registry.get_sample_value("t_seconds_count", {"hop": "policy"}) == 1
    with pytest.raises(ValueError, match="Incorrect label count"):
        requests.labels("ok")  # checked by prometheus_client the first time, never remembered
    # remove() forgets the kept children: the next use makes a new child that is exported again
    requests.remove("ok", "miss")
    assert registry.get_sample_value("t_requests_total", {"status": "ok", "tier": "miss"}) is None
    requests.labels("ok", "miss").inc()
    assert registry.get_sample_value("t_requests_total", {"status": "ok", "tier": "miss"}) == 1
    requests.clear()
    requests.labels("ok", "miss").inc(2)
    assert registry.get_sample_value("t_requests_total", {"status": "ok", "tier": "miss"}) == 2
