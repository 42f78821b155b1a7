"""Gateway settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from weir.kit.clients import ClientSettings, Deadlines
from weir.kit.config import Port, env, load
from weir.kit.server import ServerSettings


@dataclass(frozen=True)
class GatewaySettings:
    port: Port = env("WEIR_GATEWAY_PORT", 50055, help="gRPC GatewayService port")
    http_host: str = env("WEIR_GATEWAY_HTTP_HOST", "127.0.0.1", help="interface the REST bridge binds")
    http_port: Port = env("WEIR_GATEWAY_HTTP_PORT", 8080, help="REST bridge (OpenAI wire format)")
    embedder_addr: str = env("WEIR_EMBEDDER_ADDR", "127.0.0.1:50051", help="the embedder (host:port)")
    cache_addr: str = env("WEIR_CACHE_ADDR", "127.0.0.1:50052", help="the cache (host:port)")
    router_addr: str = env("WEIR_ROUTER_ADDR", "127.0.0.1:50053", help="the router (host:port)")
    reasoner_addr: str = env("WEIR_REASONER_ADDR", "127.0.0.1:50054", help="the reasoner (host:port)")
    redis_url: str = env("WEIR_REDIS_URL", "redis://127.0.0.1:6379/0", secret=True,
                          help="Redis for keys, limits, budgets, the ledger, jobs and the exact tier")
    redis_prefix: str = env("WEIR_REDIS_PREFIX", "weir:", help="prefix of every Redis key the gateway writes")
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
    semantic_cache: bool = env("WEIR_GATEWAY_SEMANTIC_CACHE", True,
                               help="look cacheable requests up in the semantic tier (false: the exact tier only)")
    exact_fast_path: bool = env(
        "WEIR_GATEWAY_EXACT_FAST_PATH", True,
        help="read the exact cache tier straight from Redis (same WEIR_REDIS_URL as the cache) instead of "
             "calling the cache's LookupExact; off: every lookup goes through the cache service")
    cache_redis_prefix: str = env("WEIR_CACHE_REDIS_PREFIX", "weir:cache:",
                                  help="the cache's Redis key prefix (for the exact fast path)")
    cache_redis_timeout_s: float = env("WEIR_CACHE_REDIS_TIMEOUT_S", 0.25,
                                       help="timeout of one exact-tier read (then the lookup degrades to a miss)")
    stream_race: bool = env(
        "WEIR_GATEWAY_STREAM_RACE", False,
        help="cacheable streams open the model call while the semantic lookup runs (after an exact miss); "
             "whichever answers first is streamed: the lookup leaves a miss's time to first token, and a "
             "semantic hit is charged the cancelled call's prompt; per request: header x-weir-stream-race: "
             "on|off, gRPC CacheControl.race")
    max_body_bytes: int = env("WEIR_GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024,
                             help="largest REST request body; a larger one gets 413")
    jobs_result_ttl_s: int = env("WEIR_JOBS_RESULT_TTL_S", 86400,
                                 help="seconds a finished job and its events are kept")
    jobs_visibility_timeout_s: float = env("WEIR_JOBS_VISIBILITY_TIMEOUT_S", 30.0,
                                           help="a job whose worker stopped heartbeating this long is reclaimed")
    jobs_max_attempts: int = env("WEIR_JOBS_MAX_ATTEMPTS", 3, help="runs of a job before it is dead-lettered")
    jobs_retry_backoff_ms: float = env("WEIR_JOBS_RETRY_BACKOFF_MS", 500.0,
                                       help="first delay before a failed run is retried (doubles each time)")
    jobs_concurrency: int = env("WEIR_JOBS_CONCURRENCY", 16, help="jobs one worker runs at a time")
    jobs_in_gateway: bool = env("WEIR_JOBS_IN_GATEWAY", False,
                                help="also run a job worker inside the gateway process")
    webhook_attempts: int = env("WEIR_WEBHOOK_ATTEMPTS", 5, help="deliveries tried before a webhook is given up")
    webhook_backoff_ms: float = env("WEIR_WEBHOOK_BACKOFF_MS", 500.0, help="first retry delay (doubles each time)")
    webhook_timeout_s: float = env("WEIR_WEBHOOK_TIMEOUT_S", 10.0, help="timeout of one webhook delivery")
    webhook_private_networks: bool = env(
        "WEIR_WEBHOOK_PRIVATE_NETWORKS", False,
        help="deliver webhooks to loopback, private, link-local and other non-public addresses too; off, a "
             "tenant's webhook URL cannot reach the network Weir runs in (`weir up` turns it on for local "
             "receivers)")
    deadlines: Deadlines = field(default_factory=lambda: load(Deadlines))
    clients: ClientSettings = field(default_factory=lambda: load(ClientSettings))
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
        if self.jobs_result_ttl_s < 1 or self.jobs_visibility_timeout_s <= 0 or self.jobs_concurrency < 1:
            problems.append("WEIR_JOBS_RESULT_TTL_S, WEIR_JOBS_VISIBILITY_TIMEOUT_S and WEIR_JOBS_CONCURRENCY: "
                            "must be > 0")
        if self.jobs_max_attempts < 1 or self.webhook_attempts < 1:
            problems.append("WEIR_JOBS_MAX_ATTEMPTS and WEIR_WEBHOOK_ATTEMPTS: must be >= 1")
        return problems
