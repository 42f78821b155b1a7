"""services.gateway.core: the policy and the exact-tier reader share one Redis lane when they may."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from services.gateway.auth import KeyStore
from services.gateway.core import Core
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from services.gateway.timings import Timings
from weir.common.v1 import types_pb2
from weir.kit.config import load
from weir.kit.redis_local import start_local_redis


async def _core(redis_url: str, **env: str) -> tuple[Core, aioredis.Redis]:
    settings = load(GatewaySettings, {"WEIR_REDIS_URL": redis_url, "WEIR_MASTER_KEY": "sk-test-master-0123456789",
                                      **env})
    listener = aioredis.Redis.from_url(redis_url)
    return Core(settings, KeyStore(listener, settings.master_key, settings.redis_prefix), GatewayMetrics(),
                listener), listener


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: the session's one holds the shared mesh's keys and jobs."""
    server = start_local_redis(tmp_path_factory.mktemp("core-redis"))
    yield server.url
    server.stop()


async def test_a_lookup_and_an_admission_made_side_by_side_go_out_in_one_write(own_redis: str) -> None:
    core, listener = await _core(own_redis)
    try:
        assert core.exact is not None and core.exact.lane is core.policy.lane
        lane = core.policy.lane
        raw, _ = await core.policy.keys.create(team="team-a", rpm=100)
        req = types_pb2.ChatRequest(model="fake-small", messages=[types_pb2.ChatMessage(role="user", content="Hi")])
        await core.exact.lookup("team-a", req)  # the connection is open, both scripts are loaded
        await core.policy.admit(raw, "fake-small", 10, 10, True, Timings())
        before = lane.round_trips
        found, adm = await asyncio.gather(core.exact.lookup("team-a", req),
                                          core.policy.admit(raw, "fake-small", 10, 10, True, Timings()))
        assert found.reason == "miss" and adm.principal.team == "team-a"
        assert adm.headers["x-ratelimit-remaining-requests"] == "98"
        assert lane.round_trips == before + 1
    finally:
        await core.close()
        await listener.aclose()


async def test_different_timeouts_keep_separate_lanes(own_redis: str) -> None:
    core, listener = await _core(own_redis, WEIR_CACHE_REDIS_TIMEOUT_S="0.5")
    try:
        assert core.exact is not None and core.exact.lane is not core.policy.lane
    finally:
        await core.close()
        await listener.aclose()
