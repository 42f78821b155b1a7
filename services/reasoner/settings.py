"""Settings of the reasoner (environment variables; the provider/model table comes from WEIR_CONFIG)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.reasoner.breaker import BreakerPolicy
from weir.kit.clients import ClientSettings
from weir.kit.config import Port, env, load
from weir.kit.server import ServerSettings


@dataclass(frozen=True)
class ReasonerSettings:
    """Retry, backoff and reporting policy. Timeouts and connection limits are per provider in WEIR_CONFIG."""

    port: Port = env("WEIR_REASONER_PORT", 50054, help="gRPC ReasonerService port")
    max_retries: int = env("WEIR_REASONER_MAX_RETRIES", 2, help="retries of a transient failure per target")
    backoff_base_ms: float = env("WEIR_REASONER_BACKOFF_BASE_MS", 250.0, help="first backoff; doubles per retry")
    backoff_max_ms: float = env("WEIR_REASONER_BACKOFF_MAX_MS", 8000.0, help="backoff ceiling")
    retry_after_cap_s: float = env(
        "WEIR_REASONER_RETRY_AFTER_CAP_S", 5.0,
        help="longest Retry-After honoured by waiting; a longer one moves on to the next target",
    )
    anthropic_max_tokens: int = env(
        "WEIR_REASONER_ANTHROPIC_MAX_TOKENS", 4096, help="max_tokens sent to Anthropic when the request has none"
    )
    breaker_failures: int = env(
        "WEIR_REASONER_BREAKER_FAILURES", 5,
        help="consecutive failed calls that open a deployment's circuit breaker (its calls are skipped)",
    )
    breaker_cooldown_s: float = env(
        "WEIR_REASONER_BREAKER_COOLDOWN_S", 5.0,
        help="how long an opened breaker skips its deployment before one probe call; doubles per failed probe",
    )
    breaker_cooldown_max_s: float = env("WEIR_REASONER_BREAKER_COOLDOWN_MAX_S", 60.0, help="longest cool-down")
    router_addr: str = env("WEIR_ROUTER_ADDR", "", help="router to report outcomes to (host:port); empty: none")
    clients: ClientSettings = field(default_factory=lambda: load(ClientSettings))
    server: ServerSettings = field(default_factory=lambda: load(ServerSettings))

    @property
    def breaker_policy(self) -> BreakerPolicy:
        return BreakerPolicy(self.breaker_failures, self.breaker_cooldown_s, self.breaker_cooldown_max_s)

    def validate(self) -> list[str]:
        problems = []
        if self.max_retries < 0:
            problems.append("WEIR_REASONER_MAX_RETRIES must be >= 0")
        if self.backoff_base_ms < 0 or self.backoff_max_ms < self.backoff_base_ms:
            problems.append("need 0 <= WEIR_REASONER_BACKOFF_BASE_MS <= WEIR_REASONER_BACKOFF_MAX_MS")
        if self.retry_after_cap_s < 0:
            problems.append("WEIR_REASONER_RETRY_AFTER_CAP_S must be >= 0")
        if self.breaker_failures < 1:
            problems.append("WEIR_REASONER_BREAKER_FAILURES must be >= 1")
        if self.breaker_cooldown_s <= 0 or self.breaker_cooldown_max_s < self.breaker_cooldown_s:
            problems.append("need 0 < WEIR_REASONER_BREAKER_COOLDOWN_S <= WEIR_REASONER_BREAKER_COOLDOWN_MAX_S")
        if self.anthropic_max_tokens < 1:
            problems.append("WEIR_REASONER_ANTHROPIC_MAX_TOKENS must be >= 1")
        return problems
