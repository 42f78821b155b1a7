"""What a gateway process and a job worker process both run requests with: the policy over Redis (keys, limits,
budgets, ledger), the exact-tier reader and the hub. Built once here so both wire them the same way."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.gateway.auth import KeyStore
from services.gateway.exact_reader import ExactReader
from services.gateway.hub import Hub
from services.gateway.metrics import GatewayMetrics
from services.gateway.policy import Policy
from services.gateway.pricing import Pricing
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import TokenCounter, load_cl100k
from weir.mesh_config import load_mesh_config


class Core:
    """The policy, the exact-tier reader and the hub, with the Redis clients they own."""

    def __init__(self, settings: GatewaySettings, keys: KeyStore, metrics: GatewayMetrics,
                 listener: aioredis.Redis) -> None:
        """`listener`: a client without a read timeout, for the policy's key-revocation subscription."""
        timeout = settings.policy_timeout_ms / 1000
        self.policy_redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                                    socket_connect_timeout=timeout)
        self.policy = Policy(
            self.policy_redis, listener, keys, Pricing(load_mesh_config()), metrics,
            prefix=settings.redis_prefix, default_max_tokens=settings.default_max_tokens,
            limits_fail_open=settings.limits_fail_open, budgets_fail_open=settings.budgets_fail_open,
            events_kept=settings.ledger_events, usage_retention_days=settings.usage_retention_days)
        self.exact_redis: aioredis.Redis | None = None
        self.exact: ExactReader | None = None
        if settings.exact_fast_path:
            t = settings.cache_redis_timeout_s
            self.exact_redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=t, socket_connect_timeout=t)
            # Same Redis, same timeouts (the defaults): a request's exact lookup and its admission, made side by
            # side, share the policy's lane and go out in one write.
            shared = self.policy.lane if t == timeout else None
            self.exact = ExactReader(self.exact_redis, settings.cache_redis_prefix, lane=shared)
        self.hub = Hub(settings, self.policy, TokenCounter(load_cl100k()), self.exact)

    async def start(self) -> None:
        await self.policy.start()
        if self.exact is not None:
            await self.exact.start()

    async def close(self) -> None:
        """After the callers of the hub have stopped: background stores, lookup counts, settlements, clients."""
        await self.hub.close()
        if self.exact is not None:
            await self.exact.close()
        await self.policy.close()
        for client in (self.policy_redis, self.exact_redis):
            if client is not None:
                await client.aclose()
