"""Gateway settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from weir.kit.clients import Deadlines
from weir.kit.config import env, load
from weir.kit.server import ServerSettings


@dataclass(frozen=True)
class GatewaySettings:
    port: int = env("WEIR_GATEWAY_PORT", 50055, help="gRPC GatewayService port")
    http_host: str = env("WEIR_GATEWAY_HTTP_HOST", "127.0.0.1")
    http_port: int = env("WEIR_GATEWAY_HTTP_PORT", 8080, help="REST bridge (OpenAI wire format)")
    embedder_addr: str = env("WEIR_EMBEDDER_ADDR", "127.0.0.1:50051")
    cache_addr: str = env("WEIR_CACHE_ADDR", "127.0.0.1:50052")
    router_addr: str = env("WEIR_ROUTER_ADDR", "127.0.0.1:50053")
    reasoner_addr: str = env("WEIR_REASONER_ADDR", "127.0.0.1:50054")
    redis_url: str = env("WEIR_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_prefix: str = env("WEIR_REDIS_PREFIX", "weir:")
    master_key: str = env("WEIR_MASTER_KEY", secret=True, help="admin key; `weir up` generates one")
    default_max_tokens: int = env("WEIR_GATEWAY_DEFAULT_MAX_TOKENS", 512,
                                  help="completion tokens reserved for a request that sets no max_tokens")
    limits_fail_open: bool = env("WEIR_GATEWAY_LIMITS_FAIL_OPEN", True,
                                 help="Redis unavailable: admit keys with rate limits (true) or refuse them")
    budgets_fail_open: bool = env("WEIR_GATEWAY_BUDGETS_FAIL_OPEN", False,
                                  help="Redis unavailable: admit keys with budgets (true) or refuse them")
    policy_timeout_ms: float = env("WEIR_GATEWAY_POLICY_TIMEOUT_MS", 250.0,
                                   help="socket timeout of the policy's Redis calls")
    ledger_events: int = env("WEIR_GATEWAY_LEDGER_EVENTS", 100_000, help="per-request events kept (a capped stream)")
    usage_retention_days: int = env("WEIR_GATEWAY_USAGE_RETENTION_DAYS", 400, help="daily aggregates kept")
    semantic_cache: bool = env("WEIR_GATEWAY_SEMANTIC_CACHE", True)
    max_body_bytes: int = env("WEIR_GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024)
    deadlines: Deadlines = field(default_factory=lambda: load(Deadlines))
    server: ServerSettings = field(default_factory=lambda: load(ServerSettings))

    def validate(self) -> list[str]:
        problems = []
        if len(self.master_key) < 16:
            problems.append("WEIR_MASTER_KEY: must be at least 16 characters")
        if self.default_max_tokens < 1:
            problems.append("WEIR_GATEWAY_DEFAULT_MAX_TOKENS: must be >= 1")
        if self.policy_timeout_ms <= 0:
            problems.append("WEIR_GATEWAY_POLICY_TIMEOUT_MS: must be > 0")
        if self.ledger_events < 1 or self.usage_retention_days < 1:
            problems.append("WEIR_GATEWAY_LEDGER_EVENTS and WEIR_GATEWAY_USAGE_RETENTION_DAYS: must be >= 1")
        return problems
