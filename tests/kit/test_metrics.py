"""Every Prometheus series a service registers is documented in docs/telemetry.md."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

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
