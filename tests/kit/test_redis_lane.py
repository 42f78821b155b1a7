"""weir.kit.redis_lane: commands from many tasks pipelined on one connection, against a real redis-server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from weir.kit.redis_lane import RedisLane
from weir.kit.redis_local import start_local_redis

# Keeps Redis busy for ARGV[1] microseconds (a command that is "out" for a while, without DEBUG SLEEP).
_BUSY = """
local t = redis.call('TIME')
repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= tonumber(ARGV[1])
return 'done'
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    yield c
    await c.aclose()


@pytest.fixture
async def lane(client: aioredis.Redis) -> AsyncIterator[RedisLane]:
    lane = RedisLane(client, "test")
    yield lane
    await lane.close()


async def test_concurrent_commands_get_their_own_replies_in_fewer_round_trips(lane: RedisLane) -> None:
    keys = [f"lane:{i}" for i in range(300)]
    await asyncio.gather(*(lane.execute("SET", k, f"value {k}") for k in keys))
    replies = await asyncio.gather(*(lane.execute("GET", k) for k in reversed(keys)))
    assert replies == [f"value {k}".encode() for k in reversed(keys)]
    assert lane.commands == 600
    # All of a gather's commands are queued in one loop turn: the first goes alone, the rest share a round trip.
    assert lane.round_trips <= 6, lane.round_trips


async def test_a_lone_command_is_sent_at_once_and_the_connection_is_kept(lane: RedisLane) -> None:
    first = await lane.execute("CLIENT", "ID")
    for i in range(5):
        assert await lane.execute("INCR", "lane:counter") == i + 1
    assert lane.round_trips == 6
    assert await lane.execute("CLIENT", "ID") == first  # one connection carried them all


async def test_an_error_reply_fails_only_its_own_command(lane: RedisLane) -> None:
    await lane.execute("SET", "lane:text", "not a number")
    results: list[object] = await asyncio.gather(
        lane.execute("GET", "lane:text"), lane.execute("INCR", "lane:text"), lane.execute("GET", "lane:text"),
        return_exceptions=True)
    ok, bad, after = results
    assert ok == after == b"not a number"
    assert isinstance(bad, ResponseError) and "not an integer" in str(bad)
    assert lane.round_trips == 2  # the SET, then the three together
    replies = await lane.execute_many([("SET", "lane:n", "1"), ("INCR", "lane:text"), ("INCR", "lane:n")])
    assert replies[0] == b"OK"  # the raw reply: no response callbacks
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == 2


async def test_scripts_run_by_digest_and_are_loaded_again_when_redis_lost_them(lane: RedisLane,
                                                                               client: aioredis.Redis) -> None:
    script = client.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    await client.script_flush()
    assert await client.script_exists(script.sha) == [False]
    assert await lane.script(script, ["hello"], ["lane:script"]) == [b"lane:script", b"hello", 1]
    assert await client.script_exists(script.sha) == [True]  # EVAL loaded it: the next call goes by digest
    assert await lane.script(script, ["again"], ["lane:script"]) == [b"lane:script", b"again", 2]
    with pytest.raises(NoScriptError):
        await lane.execute("EVALSHA", "0" * 40, 0)


async def test_a_script_run_many_times_shares_one_round_trip_and_is_loaded_again_once(
        lane: RedisLane, client: aioredis.Redis) -> None:
    script = client.register_script("if ARGV[1] == 'bad' then return redis.error_reply('ERR bad') end "
                                    "return redis.call('INCRBY', 'lane:many', ARGV[1])")
    await client.script_flush()
    replies = await lane.script_many(script, [[1], ["bad"], [10]])
    assert replies[0] == 1 and replies[2] == 11
    assert isinstance(replies[1], ResponseError) and "bad" in str(replies[1])
    assert lane.round_trips == 2  # EVALSHA for all three, then EVAL for the three Redis did not know it for
    assert await lane.script_many(script, [[100], [1000]]) == [111, 1111]
    assert lane.round_trips == 3  # loaded now: by digest, one round trip


async def test_a_caller_that_gives_up_neither_breaks_the_order_nor_runs_what_was_not_sent(lane: RedisLane) -> None:
    slow = asyncio.create_task(lane.execute("EVAL", _BUSY, 0, 100_000))  # out for 100 ms
    await asyncio.sleep(0.02)
    abandoned = asyncio.create_task(lane.execute("INCR", "lane:queued"))  # queued behind the slow one
    kept = asyncio.create_task(lane.execute("INCR", "lane:kept"))
    await asyncio.sleep(0)
    abandoned.cancel()
    assert await slow == b"done"
    assert await kept == 1
    assert abandoned.cancelled()
    assert await lane.execute("GET", "lane:queued") is None  # taken back before it was sent

    # Given up while out: the command runs, its reply is read and dropped, the next replies stay in step.
    sent = asyncio.create_task(lane.execute("EVAL", _BUSY, 0, 50_000))
    await asyncio.sleep(0.01)
    sent.cancel()
    follower = await lane.execute("INCR", "lane:kept")
    assert follower == 2
    assert await lane.execute("GET", "lane:kept") == b"2"


async def test_a_timeout_fails_its_round_trip_and_the_next_one_reconnects(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.05)
    lane = RedisLane(client, "test")
    try:
        busy = lane.execute("EVAL", _BUSY, 0, 300_000)
        same_trip = lane.execute("SET", "lane:t", "1")
        results = await asyncio.gather(busy, same_trip, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        await asyncio.sleep(0.4)  # the script ends; a new connection is made for the next command
        assert await lane.execute("INCR", "lane:t") == 2  # the SET was sent with the script and ran
    finally:
        await lane.close()
        await client.aclose()


async def test_a_redis_that_goes_away_fails_the_commands_and_one_that_returns_is_used_again(
        tmp_path: Path) -> None:
    server = start_local_redis(tmp_path / "a")
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    client = aioredis.Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    lane = RedisLane(client, "test")
    try:
        assert await lane.execute("SET", "lane:x", "1") == b"OK"
        server.stop()
        with pytest.raises(RedisConnectionError):  # the kept connection is closed, a new one is refused
            await lane.execute("GET", "lane:x")
        with pytest.raises(RedisConnectionError):  # refused at connect
            await lane.execute("GET", "lane:x")
        server = start_local_redis(tmp_path / "b", port=port)
        assert await lane.execute("INCR", "lane:y") == 1
        assert lane.round_trips == 2
        # Redis restarts while the lane is idle: its kept connection is stale; the command goes again, once, on
        # a new connection and runs once.
        server.stop()
        server = start_local_redis(tmp_path / "c", port=port)
        assert await lane.execute("INCR", "lane:z") == 1
        assert await lane.execute("GET", "lane:z") == b"1"
    finally:
        await lane.close()
        await client.aclose()
        server.stop()


async def test_close_fails_what_is_queued_and_refuses_later_commands(lane: RedisLane) -> None:
    slow = asyncio.create_task(lane.execute("EVAL", _BUSY, 0, 100_000))
    await asyncio.sleep(0.02)
    queued = asyncio.create_task(lane.execute("GET", "lane:q"))
    await asyncio.sleep(0)
    await lane.close()
    for task in (slow, queued):
        with pytest.raises(RedisConnectionError, match="lane closed"):
            await task
    with pytest.raises(RedisConnectionError, match="lane closed"):
        await lane.execute("GET", "lane:q")


async def test_a_failed_execute_many_raises_once_and_leaves_no_unretrieved_errors(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.05)
    lane = RedisLane(client, "test")
    try:
        with pytest.raises(RedisTimeoutError):
            await lane.execute_many([("EVAL", _BUSY, 0, 200_000), ("GET", "a"), ("GET", "b")])
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0)
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        await lane.close()
        await client.aclose()


async def test_replies_keep_their_types(lane: RedisLane) -> None:
    await lane.execute("RPUSH", "lane:list", "a", "b")
    assert await lane.execute("LRANGE", "lane:list", 0, -1) == [b"a", b"b"]
    assert await lane.execute("EXISTS", "lane:none") == 0


async def test_arguments_are_packed_as_redis_py_packs_them_and_a_wrong_one_fails_only_its_caller(
        lane: RedisLane, client: aioredis.Redis) -> None:
    values = ("ümlaut ✓", b"\x00\xff", 12345, -7, 1.5, 0.1, 1e20, 10**30, memoryview(b"view"), bytearray(b"array"))
    replies = await asyncio.gather(*(lane.execute("SET", f"lane:v{i}", v) for i, v in enumerate(values)),
                                   lane.execute("SET", "lane:bad", None), return_exceptions=True)
    assert replies[:-1] == [b"OK"] * len(values)
    assert isinstance(replies[-1], DataError)  # redis-py's own error, raised to its caller alone
    for i, v in enumerate(values):
        expected = bytes(v) if isinstance(v, (bytes, memoryview, bytearray)) else (
            v.encode() if isinstance(v, str) else repr(v).encode())
        assert await client.get(f"lane:v{i}") == expected
