"""The gateway's read fast path into the exact cache tier: one Redis GET instead of a gRPC hop to the cache.

The cache service owns the tier (it writes entries with their registry, TTL, capacity and invalidation); the
gateway shares its Redis and keyspace (weir/exact_cache.py) and reads entries directly, so an exact hit costs one
Redis round trip and a miss goes on to the embedding without waiting for another process. Lookup counts go to
the tier's stats hash once a second (one pipelined round trip), where the cache's GetStats adds them.

Redis trouble degrades like the cache itself does: the lookup is a miss with a "degraded" reason, a small breaker
stops further tries for a second, and the request goes on to the semantic tier and the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from weir import chat, exact_cache
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.common.v1 import types_pb2
from weir.kit import tasks
from weir.kit.redis_lane import RedisLane

log = logging.getLogger("weir.gateway.exact")

FLUSH_S = 1.0

# KEYS: entry ctx sem   ARGV: context_key now_ms
# Returns {entry blob or nil, 1 if a semantic search in this context could find something else 0}. A tenant
# whose context index does not exist yet (entries stored before it existed) but has semantic entries: 1.
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
local latest = redis.call('ZSCORE', KEYS[2], ARGV[1])
local now = tonumber(ARGV[2])
local ctx = 0
if latest then
  if tonumber(latest) > now then ctx = 1 end
elseif redis.call('EXISTS', KEYS[2]) == 0 and redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[2], '+inf') > 0 then
  ctx = 1
end
return {v, ctx}
"""
_HITS, _LOOKUPS, _MISSES = exact_cache.STAT_FIELDS.index("exact_hits"), \
    exact_cache.STAT_FIELDS.index("exact_lookups"), exact_cache.STAT_FIELDS.index("misses")


@dataclass(frozen=True)
class Lookup:
    """An exact-tier lookup: the answer (or None), the reason, and whether a semantic search could find anything
    in the request's conversation context."""

    answer: cache_pb.CachedAnswer | None
    reason: str
    context_has_entries: bool


class ExactReader:
    def __init__(self, redis: aioredis.Redis, prefix: str, retry_after_s: float = 1.0,
                 lane: RedisLane | None = None) -> None:
        """`lane`: another component's lane to the same Redis with the same timeouts, shared (not closed here) so
        that a request's lookup and admission go out in one write; by default the reader has its own."""
        self.redis = redis
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._counts: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._flusher: asyncio.Task[None] | None = None
        self._lookup = redis.register_script(_LOOKUP)
        self._owns_lane = lane is None
        self.lane = lane or RedisLane(redis, "exact")  # lookups from concurrent requests share round trips

    async def start(self) -> None:
        self._flusher = tasks.every(FLUSH_S, self.flush, "exact-tier stats flush")

    async def close(self) -> None:
        await tasks.stop(self._flusher)
        await self.flush()
        if self._owns_lane:
            await self.lane.close()

    async def lookup(self, tenant: str, req: types_pb2.ChatRequest, count: bool = True) -> Lookup:
        """The tenant's exact-tier answer to `req` (or None) and the reason, as LookupExact gives them, and whether
        the semantic tier holds anything in the request's conversation context (same round trip).
        `count=False`: a speculative lookup, counted in the stats by `counted()` only if it is used."""
        if time.monotonic() < self._down_until:
            return Lookup(None, "degraded: redis unavailable", True)
        p = self.prefix
        keys = [exact_cache.entry_key(p, tenant, chat.exact_key(tenant, req)), exact_cache.context_index_key(p, tenant),
                exact_cache.semantic_registry_key(p, tenant)]
        try:
            blob, ctx = await self.lane.script(self._lookup, [chat.context_key(tenant, req), int(time.time() * 1000)],
                                               keys)
        except (RedisError, OSError) as exc:
            if self._down_until == 0.0:
                log.warning("exact tier unreachable; lookups degrade", extra={"error": type(exc).__name__})
            self._down_until = time.monotonic() + self.retry_after_s
            return Lookup(None, "degraded: redis unavailable", True)
        self._down_until = 0.0
        found = Lookup(*self._answer(blob), bool(ctx))
        return self.counted(tenant, found) if count else found

    def counted(self, tenant: str, found: Lookup) -> Lookup:
        """Adds a lookup that answered (not a degraded one) to the tenant's stats; returns it."""
        if not found.reason.startswith("degraded"):
            counts = self._counts[tenant]
            counts[_LOOKUPS] += 1
            counts[_HITS if found.answer is not None else _MISSES] += 1
        return found

    @staticmethod
    def _answer(blob: bytes | str | None) -> tuple[cache_pb.CachedAnswer | None, str]:
        if blob is None:
            return None, "miss"
        try:
            return cache_pb.CachedAnswer.FromString(blob if isinstance(blob, bytes) else blob.encode()), "hit"
        except Exception:  # a damaged entry is a miss, never an error for the client
            log.warning("unreadable exact-tier entry ignored")
            return None, "miss"

    async def flush(self) -> None:
        """Adds the counts gathered since the last flush to the tier's stats (kept for the next try on error)."""
        if not self._counts:
            return
        counts, self._counts = self._counts, defaultdict(lambda: [0, 0, 0])
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tenant, values in counts.items():
                    key = exact_cache.stats_key(self.prefix, tenant)
                    for name, v in zip(exact_cache.STAT_FIELDS, values, strict=True):
                        if v:
                            pipe.hincrby(key, name, v)
                    pipe.sadd(exact_cache.stats_tenants_key(self.prefix), tenant)
                await pipe.execute()
        except (RedisError, OSError):
            for tenant, values in counts.items():
                mine = self._counts[tenant]
                for i, v in enumerate(values):
                    mine[i] += v

