"""Prometheus metrics of the gateway (served at GET /metrics on the REST port, with the kit's series).

Labels are bounded: models come from the model table, tiers and statuses from fixed sets. Keys and teams are
not labels (their number is unbounded); per key and team figures live in the ledger (`GET /v1/usage`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from weir.common.v1 import types_pb2
from weir.kit import metrics as kit_metrics
from weir.kit.metrics import BUCKETS, Counter, Gauge, Histogram

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the exposition
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("weir_gateway_requests", "Chat requests by outcome and cache tier",
                                ("status", "cache"), registry=r)
        self.tokens = Counter("weir_gateway_tokens", "Billable tokens by model and kind (prompt, completion, cached)",
                              ("model", "kind"), registry=r)
        self.cost = Counter("weir_gateway_cost_usd", "Upstream cost in USD by model", ("model",), registry=r)
        self.cache_hits = Counter("weir_gateway_cache_hits", "Answers served from the cache by tier", ("tier",),
                                  registry=r)
        self.saved_tokens = Counter("weir_gateway_saved_tokens", "Tokens the cache saved", registry=r)
        self.saved_usd = Counter("weir_gateway_saved_usd", "USD the cache saved (original usage, original model)",
                                 registry=r)
        self.refusals = Counter("weir_gateway_policy_refusals", "Requests refused by the policy", ("reason",),
                                registry=r)
        self.degraded = Counter("weir_gateway_policy_degraded", "Requests decided without Redis", ("mode",),
                                registry=r)
        self.ledger_failures = Counter("weir_gateway_ledger_failures", "Settlements that could not be written",
                                       registry=r)
        self.hop = Histogram("weir_gateway_hop_seconds", "Time per hop (policy, embed, cache, route, upstream)",
                             ("hop",), buckets=BUCKETS, registry=r)
        self.latency = Histogram("weir_gateway_request_seconds", "Whole request time by cache tier", ("cache",),
                                 buckets=BUCKETS, registry=r)
        self.jobs_queue = Gauge("weir_jobs_queue", "Background jobs in the queue by state (waiting, running)",
                                ("state",), registry=r)
        self.overhead = Histogram("weir_gateway_overhead_seconds",
                                  "Gateway time outside the upstream call (the mesh's own cost per request)",
                                  buckets=BUCKETS, registry=r)

    def observe(self, status: str, cache: str, model: str, usage: types_pb2.Usage, cost_usd: float,
                saved_tokens: int, saved_usd: float, hops: dict[str, float], total_ms: float) -> None:
        self.requests.labels(status, cache).inc()
        if usage.prompt_tokens or usage.completion_tokens:
            self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
            self.tokens.labels(model, "completion").inc(usage.completion_tokens)
            if usage.cached_tokens:
                self.tokens.labels(model, "cached").inc(usage.cached_tokens)
            self.cost.labels(model).inc(cost_usd)
        if cache != "miss":
            self.cache_hits.labels(cache).inc()
            self.saved_tokens.inc(saved_tokens)
            self.saved_usd.inc(saved_usd)
        upstream = 0.0
        for hop, ms in hops.items():
            self.hop.labels(hop).observe(ms / 1000)
            if hop.startswith("upstream"):
                upstream += ms
        self.latency.labels(cache).observe(total_ms / 1000)
        self.overhead.observe(max(0.0, total_ms - upstream) / 1000)

    def exposition(self) -> bytes:
        """The gateway's series, then the process' kit series (its gRPC API's calls, its Redis lanes)."""
        return generate_latest(self.registry) + generate_latest(kit_metrics.REGISTRY)
