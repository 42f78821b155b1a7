"""The exact tier in Redis, and the per-tenant registry of every entry of both tiers.

Keys (P = WEIR_CACHE_REDIS_PREFIX, default "weir:cache:"):
- ``P x:<tenant>:<exact_key>``   the serialized CachedAnswer, with the entry's TTL (Redis expires it).
- ``P age:<tenant>``             ZSET entry id -> stored at (ms): capacity eviction takes the oldest.
- ``P exp:<tenant>``             ZSET entry id -> expires at (ms): live count, pruning of expired ids.
- ``P sem:<tenant>``             ZSET entry id -> expires at (ms) of the entries also in the semantic tier.
- ``P meta:<tenant>``            HASH entry id -> {"x": exact key, "mk": model set key, "c": collection}.
- ``P model:<hex(model)>:<tenant>``  SET of the entry ids answered by that model.
- ``P tenants``                  SET of tenants with entries (for all-tenant stats).
- ``P ctx:<tenant>``              ZSET context key -> latest expiry (ms) of its semantic entries (readers skip
  a semantic search in a context that has none; weir/exact_cache.py).
- ``P stats:<tenant>``, ``P stats-tenants``  lookup counts reported by readers outside this service
  (the gateway's exact fast path; weir/exact_cache.py).

Every write is one Lua script, so the registry never disagrees with the entries: Store prunes expired
ids, writes the entry and evicts beyond capacity atomically; Invalidate removes in bounded chunks.
Scripts touch keys derived from the tenant's registry, so this targets a single Redis (not Cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from weir import exact_cache
from weir.kit.redis_lane import RedisLane

log = logging.getLogger("weir.cache.exact")

T = TypeVar("T")

# Expired ids pruned per Store (amortises a mass expiry over later stores) and ids per Invalidate chunk.
PRUNE_LIMIT = 256
CHUNK = 2000

_LIB = """
local function remove_entry(age, exp, sem, meta, id)
  local raw = redis.call('HGET', meta, id)
  local coll = ''
  if raw then
    local m = cjson.decode(raw)
    redis.call('DEL', m.x)
    redis.call('SREM', m.mk, id)
    coll = m.c
    redis.call('HDEL', meta, id)
  end
  redis.call('ZREM', age, id)
  redis.call('ZREM', exp, id)
  redis.call('ZREM', sem, id)
  return coll
end

local function prune(age, exp, sem, meta, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do remove_entry(age, exp, sem, meta, id) end
end
"""

# KEYS: age exp sem meta tenants ctx
# ARGV: tenant id xkey blob ttl_ms expires_ms meta_json model_key semantic(0|1) cap now_ms prune_limit context_key
# Returns {previous collection of this id or '', evicted id, its collection, ...}.
_STORE = _LIB + """
local age, exp, sem, meta, tenants, ctx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tenant, id, xkey, blob = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local meta_json, model_key, semantic = ARGV[7], ARGV[8], ARGV[9]
local cap, now, limit = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local context_key = ARGV[13]
prune(age, exp, sem, meta, now, limit)
redis.call('ZREMRANGEBYSCORE', ctx, '-inf', now)
if semantic == '1' then
  local latest = redis.call('ZSCORE', ctx, context_key)
  if not latest or tonumber(latest) < expires then redis.call('ZADD', ctx, expires, context_key) end
end
local out = {''}
local old = redis.call('HGET', meta, id)
if old then
  local m = cjson.decode(old)
  out[1] = m.c
  if m.mk ~= model_key then redis.call('SREM', m.mk, id) end
end
redis.call('SET', xkey, blob, 'PX', ttl)
redis.call('ZADD', age, now, id)
redis.call('ZADD', exp, expires, id)
redis.call('HSET', meta, id, meta_json)
redis.call('SADD', model_key, id)
if semantic == '1' then redis.call('ZADD', sem, expires, id) else redis.call('ZREM', sem, id) end
redis.call('SADD', tenants, tenant)
local over = redis.call('ZCARD', age) - cap
if over > 0 then
  local victims = redis.call('ZRANGE', age, 0, over)
  local n = 0
  for _, v in ipairs(victims) do
    if n < over and v ~= id then
      local coll = remove_entry(age, exp, sem, meta, v)
      table.insert(out, v)
      table.insert(out, coll)
      n = n + 1
    end
  end
end
return out
"""

# KEYS: age exp sem meta tenants
# ARGV: tenant mode(id|model|all) arg(entry id | model set key | '') now_ms chunk
# Returns {id, collection, live(0|1), ...} for the entries removed by this chunk.
_INVALIDATE = _LIB + """
local age, exp, sem, meta, tenants = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tenant, mode, arg = ARGV[1], ARGV[2], ARGV[3]
local now, chunk = tonumber(ARGV[4]), tonumber(ARGV[5])
local ids
if mode == 'id' then
  ids = {arg}
elseif mode == 'model' then
  ids = redis.call('SRANDMEMBER', arg, chunk)
else
  ids = redis.call('ZRANGE', age, 0, chunk - 1)
end
local out = {}
for _, id in ipairs(ids) do
  local score = redis.call('ZSCORE', exp, id)
  local known = score or redis.call('HEXISTS', meta, id) == 1
  if mode == 'model' then redis.call('SREM', arg, id) end
  if known then
    local live = '0'
    if score and tonumber(score) > now then live = '1' end
    local coll = remove_entry(age, exp, sem, meta, id)
    table.insert(out, id)
    table.insert(out, coll)
    table.insert(out, live)
  end
end
if redis.call('ZCARD', age) == 0 then
  redis.call('SREM', tenants, tenant)
  redis.call('DEL', KEYS[6])
end
return out
"""

# KEYS: sem meta   ARGV: id. The semantic write of a stored entry failed: it lives in the exact tier only.
_UNMARK = """
redis.call('ZREM', KEYS[1], ARGV[1])
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if raw then
  local m = cjson.decode(raw)
  m.c = ''
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(m))
end
return 1
"""


class RedisUnavailable(Exception):
    """Redis did not answer (or answered an error); callers degrade instead of failing."""


@dataclass(frozen=True)
class Removed:
    """An entry removed from the registry, the collection holding its semantic row ('' if none)."""

    entry_id: str
    collection: str
    live: bool


@dataclass(frozen=True)
class StoreOutcome:
    """Collection of the entry's previous version ('' if none) and the entries evicted for capacity."""

    previous_collection: str
    evicted: list[tuple[str, str]]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ExactTier:
    """Async access to the exact tier and registry, with a small circuit breaker for a dead Redis."""

    def __init__(self, url: str, prefix: str, timeout_s: float, retry_after_s: float) -> None:
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),  # one immediate retry covers a stale pooled connection
            health_check_interval=0,
        )
        self._store = self._redis.register_script(_STORE)
        self._invalidate = self._redis.register_script(_INVALIDATE)
        self._unmark = self._redis.register_script(_UNMARK)
        self._down_until = 0.0
        # Reads and stores from concurrent requests share pipelined round trips on one connection.
        self.lane = RedisLane(self._redis, "exact-tier")

    async def close(self) -> None:
        await self.lane.close()
        await self._redis.aclose()

    # ---- keys ------------------------------------------------------------------------------------

    def entry_key(self, tenant: str, exact_key: str) -> str:
        return exact_cache.entry_key(self.prefix, tenant, exact_key)

    def model_key(self, tenant: str, model: str) -> str:
        return f"{self.prefix}model:{model.encode().hex()}:{tenant}"

    def _registry(self, tenant: str) -> list[str]:
        p = self.prefix
        return [f"{p}age:{tenant}", f"{p}exp:{tenant}", exact_cache.semantic_registry_key(p, tenant),
                f"{p}meta:{tenant}", f"{p}tenants", exact_cache.context_index_key(p, tenant)]

    # ---- calls -----------------------------------------------------------------------------------

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        """Awaits one Redis call; connection trouble opens the breaker so later calls fail fast."""
        if time.monotonic() < self._down_until:
            if hasattr(aw, "close"):
                aw.close()  # an unawaited coroutine would warn
            raise RedisUnavailable("redis unavailable (retrying shortly)")
        try:
            result = await aw
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if self._down_until == 0.0:
                log.warning("redis unavailable; the exact tier degrades", extra={"op": what, "error": str(exc)})
            self._down_until = time.monotonic() + self.retry_after_s
            raise RedisUnavailable(f"redis unavailable ({type(exc).__name__})") from exc
        except RedisError as exc:
            log.warning("redis error", extra={"op": what, "error": str(exc)})
            raise RedisUnavailable(f"redis error ({exc})") from exc
        if self._down_until:
            log.info("redis is back", extra={"op": what})
            self._down_until = 0.0
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self._redis.ping()))
        except RedisUnavailable:
            return False

    async def get(self, tenant: str, exact_key: str) -> bytes | None:
        value = await self._call("get", self.lane.execute("GET", self.entry_key(tenant, exact_key)))
        return None if value is None else value if isinstance(value, bytes) else value.encode()

    async def store(
        self,
        tenant: str,
        entry_id: str,
        exact_key: str,
        blob: bytes,
        model: str,
        collection: str,
        ttl_ms: int,
        cap: int,
        context_key: str = "",
    ) -> StoreOutcome:
        """Writes the entry and its registry records; evicts the oldest entries beyond `cap`."""
        now = int(time.time() * 1000)
        xkey = self.entry_key(tenant, exact_key)
        mk = self.model_key(tenant, model)
        meta = orjson.dumps({"x": xkey, "mk": mk, "c": collection})
        semantic = "1" if collection else "0"
        args: list[bytes | str | int] = [tenant, entry_id, xkey, blob, ttl_ms, now + ttl_ms, meta, mk, semantic,
                                         cap, now, PRUNE_LIMIT, context_key]
        out = await self._call("store", self.lane.script(self._store, args, self._registry(tenant)))
        items = [_s(x) for x in out]
        evicted = [(items[i], items[i + 1]) for i in range(1, len(items) - 1, 2)]
        return StoreOutcome(previous_collection=items[0], evicted=evicted)

    async def unmark_semantic(self, tenant: str, entry_id: str) -> None:
        p = self.prefix
        keys = [f"{p}sem:{tenant}", f"{p}meta:{tenant}"]
        await self._call("unmark", self.lane.script(self._unmark, [entry_id], keys))

    async def invalidate(self, tenant: str, mode: str, arg: str) -> list[Removed]:
        """Removes the tenant's entries by id, model or all; returns what it removed."""
        if mode == "model":
            arg = self.model_key(tenant, arg)
        removed: list[Removed] = []
        while True:
            now = int(time.time() * 1000)
            out = await self._call(
                "invalidate",
                self._invalidate(keys=self._registry(tenant), args=[tenant, mode, arg, now, CHUNK]),
            )
            items = [_s(x) for x in out]
            chunk = [Removed(items[i], items[i + 1], items[i + 2] == "1") for i in range(0, len(items), 3)]
            removed.extend(chunk)
            if mode == "id" or not chunk:
                return removed

    async def _tenants(self, set_key: str, tenant: str | None) -> list[str]:
        """[tenant], or every tenant in the set `set_key` when `tenant` is None."""
        if tenant is not None:
            return [tenant]
        return sorted(_s(t) for t in await self._call("tenants", self._redis.smembers(set_key)))

    async def reader_counts(self, tenant: str | None) -> dict[str, int]:
        """Lookup counts (STAT_FIELDS) that readers outside this service reported, for one tenant or all."""
        tenants = await self._tenants(exact_cache.stats_tenants_key(self.prefix), tenant)
        out = dict.fromkeys(exact_cache.STAT_FIELDS, 0)
        if not tenants:
            return out
        pipe = self._redis.pipeline(transaction=False)
        for t in tenants:
            pipe.hmget(exact_cache.stats_key(self.prefix, t), list(exact_cache.STAT_FIELDS))
        for values in await self._call("stats", pipe.execute()):
            for name, v in zip(exact_cache.STAT_FIELDS, values, strict=True):
                out[name] += int(v or 0)
        return out

    async def counts(self, tenant: str | None) -> tuple[int, int]:
        """Live (exact, semantic) entries of one tenant, or of all tenants when `tenant` is None."""
        tenants = await self._tenants(f"{self.prefix}tenants", tenant)
        if not tenants:
            return 0, 0
        now = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for t in tenants:
            pipe.zcount(f"{self.prefix}exp:{t}", f"({now}", "+inf")
            pipe.zcount(f"{self.prefix}sem:{t}", f"({now}", "+inf")
        res = await self._call("counts", pipe.execute())
        return sum(int(x) for x in res[0::2]), sum(int(x) for x in res[1::2])
