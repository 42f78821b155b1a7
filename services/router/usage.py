"""What the router sees of the per-deployment rate limits the gateway enforces.

The gateway admits every call to a model with `rpm`/`tpm` in the model table against a sliding one-minute window in
Redis (services/gateway/lua.py, `{prefix}rl:d:<model>:z`: one member "<ticket>:<tokens>" per admitted call, scored
by its admission time). The router reads those windows every `poll_s` (one read-only script for all deployments)
and moves a model whose window is nearly full behind the others in a plan, with the reason saying so; the gateway
still enforces the limit exactly. Redis trouble leaves the view empty (after `stale_s`): no reordering, no errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from weir.kit import tasks
from weir.mesh_config import MeshConfig

log = logging.getLogger("weir.router.usage")

# ARGV: prefix, then model ids. Returns {requests, tokens} per model over the last 60 s (read only).
_READ = r"""
local clock = redis.call('TIME')
local since = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - 60000
local out = {}
for i = 2, #ARGV do
  local members = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'rl:d:' .. ARGV[i] .. ':z', '(' .. since, '+inf')
  local tokens = 0
  for _, m in ipairs(members) do tokens = tokens + tonumber(string.sub(m, string.find(m, ':', 1, true) + 1)) end
  table.insert(out, #members)
  table.insert(out, tokens)
end
return out
"""


@dataclass(frozen=True)
class Usage:
    """One deployment's last-minute use of its limits."""

    requests: int
    tokens: int
    rpm: int
    tpm: int

    @property
    def share(self) -> float:
        """The larger of the request and token shares of the limits used (0..1+)."""
        shares = [self.requests / self.rpm if self.rpm else 0.0, self.tokens / self.tpm if self.tpm else 0.0]
        return max(shares)

    def describe(self) -> str:
        if self.tpm and (not self.rpm or self.tokens / self.tpm >= self.requests / self.rpm):
            return f"{self.share:.0%} of its {self.tpm:,} TPM used"
        return f"{self.share:.0%} of its {self.rpm:,} RPM used"


class DeploymentUsage:
    """The latest view of every rate-limited deployment (model id -> Usage)."""

    def __init__(self, mesh: MeshConfig, redis: aioredis.Redis | None, prefix: str, poll_s: float = 0.5,
                 stale_s: float = 5.0) -> None:
        self.limits = {m.id: (m.rpm, m.tpm) for m in mesh.models.values() if m.rpm > 0 or m.tpm > 0}
        self.redis = redis
        self.prefix = prefix
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.view: dict[str, Usage] = {}
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._read = redis.register_script(_READ) if redis is not None else None
        self._failing = False

    def get(self, model_id: str) -> Usage | None:
        if self._at and time.monotonic() - self._at > self.stale_s:
            self.view = {}
        return self.view.get(model_id)

    async def refresh(self) -> None:
        if self._read is None or not self.limits:
            return
        models = list(self.limits)
        try:
            raw = await self._read(args=[self.prefix, *models])
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("deployment usage unreadable; plans ignore it", extra={"error": type(exc).__name__})
            self._failing = True
            return
        if self._failing:
            log.info("deployment usage readable again")
        self._failing = False
        self.view = {m: Usage(int(raw[2 * i]), int(raw[2 * i + 1]), *self.limits[m]) for i, m in enumerate(models)}
        self._at = time.monotonic()

    async def start(self) -> None:
        if self._read is not None and self.limits:
            await self.refresh()
            self._task = tasks.every(self.poll_s, self.refresh, "deployment usage poll")

    async def close(self) -> None:
        await tasks.stop(self._task)
        if self.redis is not None:
            await self.redis.aclose()

