"""Settings of the router service, from WEIR_ROUTER_* variables (the model table comes from WEIR_CONFIG)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.router.health import HealthPolicy
from weir.kit.config import Port, env, load
from weir.kit.server import ServerSettings

#: The trained scorer shipped with the router (services/router/training/train.py writes it).
SHIPPED_SCORER = Path(__file__).resolve().parent / "artifacts" / "scorer.npz"


def _default_scorer() -> Path | None:
    return SHIPPED_SCORER if SHIPPED_SCORER.is_file() else None


@dataclass(frozen=True)
class RouterSettings:
    """How the router listens, scores virtual models and weighs provider health."""

    port: Port = env("WEIR_ROUTER_PORT", 50053, help="gRPC RouterService port")
    quality_bias: float = env(
        "WEIR_ROUTER_QUALITY_BIAS", 0.0,
        help="default cost/quality knob in [-1, 1]; a request's quality_bias adds to it",
    )
    scorer_path: Path | None = env(
        "WEIR_ROUTER_SCORER_PATH", _default_scorer(),
        help="trained scorer artefact (.npz, see services/router/scorer.py); unset = the shipped "
             "services/router/artifacts/scorer.npz when present; set but empty = the length prior",
    )
    embedding_dim: int = env(
        "WEIR_ROUTER_EMBEDDING_DIM", 384,
        help="embedding dimension expected when no trained scorer is loaded (all-MiniLM-L6-v2: 384)",
    )
    prior_midpoint_tokens: int = env(
        "WEIR_ROUTER_PRIOR_MIDPOINT_TOKENS", 1000,
        help="prompt length at which the length prior gives p(strong) = 0.5",
    )
    failure_threshold: int = env(
        "WEIR_ROUTER_FAILURE_THRESHOLD", 3, help="consecutive failures before a model cools down"
    )
    cooldown_base_s: float = env("WEIR_ROUTER_COOLDOWN_BASE_S", 5.0, help="first cooldown; doubles per failure")
    cooldown_max_s: float = env("WEIR_ROUTER_COOLDOWN_MAX_S", 300.0, help="longest cooldown (Retry-After aside)")
    latency_alpha: float = env("WEIR_ROUTER_LATENCY_ALPHA", 0.2, help="weight of a new sample in the latency EWMA")
    redis_url: str = env("WEIR_REDIS_URL", "", secret=True,
                         help="the gateway's Redis, to read per-deployment rate windows; empty = plans ignore them")
    redis_prefix: str = env("WEIR_REDIS_PREFIX", "weir:", help="the gateway's Redis key prefix")
    usage_poll_s: float = env("WEIR_ROUTER_USAGE_POLL_S", 0.5, help="how often deployment windows are read")
    full_share: float = env(
        "WEIR_ROUTER_DEPLOYMENT_FULL_SHARE", 0.9,
        help="share of a deployment's rpm/tpm in use from which it moves behind deployments with room")
    server: ServerSettings = field(default_factory=lambda: load(ServerSettings))

    @property
    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(
            failure_threshold=self.failure_threshold,
            cooldown_base_s=self.cooldown_base_s,
            cooldown_max_s=self.cooldown_max_s,
            latency_alpha=self.latency_alpha,
        )

    def validate(self) -> list[str]:
        problems = [f"WEIR_ROUTER: {p}" for p in self.health_policy.validate()]
        if not -1.0 <= self.quality_bias <= 1.0:
            problems.append(f"WEIR_ROUTER_QUALITY_BIAS must be in [-1, 1], got {self.quality_bias}")
        if self.embedding_dim <= 0:
            problems.append("WEIR_ROUTER_EMBEDDING_DIM must be > 0")
        if self.prior_midpoint_tokens <= 0:
            problems.append("WEIR_ROUTER_PRIOR_MIDPOINT_TOKENS must be > 0")
        if self.usage_poll_s <= 0:
            problems.append("WEIR_ROUTER_USAGE_POLL_S must be > 0")
        if not 0 < self.full_share <= 1:
            problems.append("WEIR_ROUTER_DEPLOYMENT_FULL_SHARE must be in (0, 1]")
        return problems
