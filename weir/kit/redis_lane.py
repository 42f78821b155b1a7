"""Hot-path Redis commands from many tasks, pipelined on one connection (`RedisLane`).

redis-py's client costs ≈ 130–190 µs of CPU per command, of which the Redis round trip itself (pack, one write,
one read, parse) is ≈ 60–80: the rest is the pool, the retry wrapper and the timeout tasks around every call
(docs/performance.md, "Redis commands pipelined on one connection"). The gateway makes two or three Redis calls
per request (the admission script, the exact-tier read, the settlement), so a lane carries them instead:

- **One connection, one round trip out at a time.** A command is queued; one task sends everything queued
  while its previous round trip was out as one write (a pipeline) and reads the replies in order. Alone, a
  command costs one round trip on a connection kept open (≈ 30 % less CPU than through the client); under load,
  one write carries many (a pipeline of four costs ≈ a third per command).
- **redis-py underneath.** The connection is made by the client's own pool (`make_connection`): the same
  address, TLS, AUTH, database, timeouts and reply parser (hiredis), and the same exception types reach the
  callers (`ConnectionError`, `TimeoutError`, `ResponseError` and `NoScriptError` per command).
- **Failures.** An error reply fails only its own command. A broken connection or a timeout (the client's
  `socket_timeout`, for the write and for each reply) fails every command of that round trip with the error; the
  connection is dropped and the next round trip opens a new one. One case is retried, once, on a new
  connection: a connection kept from an earlier round trip that is found closed before any reply came back
  (Redis restarted, an idle timeout dropped it), where the commands did not run. A timeout is never retried
  (the commands may be running: an admission must not reserve twice); the caller decides, as with the client
  (the policy store degrades, the exact tier counts a miss).
- **Cancellation.** A caller that gives up before its command was sent takes it back (an admission abandoned
  while queued reserves nothing). Once sent, the command runs, as it would have through the client, and its
  reply is read and dropped, so the replies of the others stay in order. The lane's own task is never cancelled
  by a caller.
- **Scripts.** `script()` sends EVALSHA and, if Redis does not know the script (restarted, flushed), EVAL with
  its body once, which loads it again.
- **Tracing.** With tracing on, each command gets a client span like redis-py's instrumentation gives the
  client's commands (the command's name, `db.system` redis, no arguments: keys and values never reach a trace),
  plus the number of commands that shared its round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from weir.kit import metrics, telemetry

#: Commands per round trip is how well callers share a write (1 when commands come one at a time).
_ROUND_TRIPS = metrics.counter("weir_redis_lane_round_trips", "Round trips to Redis made by a lane "
                               "(weir.kit.redis_lane)", ("lane",))
_COMMANDS = metrics.counter("weir_redis_lane_commands", "Commands sent by a lane, in the round trips above", ("lane",))

Command = tuple[Any, ...]


class _Waiter:
    __slots__ = ("future", "packed", "span")

    def __init__(self, packed: bytes, future: asyncio.Future[Any], span: telemetry.ClientSpan | None) -> None:
        self.packed = packed
        self.future = future
        self.span = span


class RedisLane:
    """Commands queued from any task of one event loop, sent on one connection in pipelined round trips."""

    def __init__(self, client: aioredis.Redis, name: str = "redis") -> None:
        self._pool = client.connection_pool
        self.name = name
        self._conn: AbstractConnection | None = None
        kwargs = self._pool.connection_kwargs
        # Commands are packed by hiredis in C (what redis-py's own packer ends in, after encoding every argument
        # in Python: a third of a lone admission's CPU); redis-py packs what hiredis refuses, so an argument of a
        # wrong type raises redis-py's DataError. Another text encoding than UTF-8 is left to redis-py entirely.
        self._packer: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._hiredis = (str(kwargs.get("encoding", "utf-8")).lower().replace("-", "") == "utf8"
                         and kwargs.get("encoding_errors", "strict") == "strict")
        self._queue: list[_Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._peer = {"db.system": "redis", "db.redis.database_index": kwargs.get("db", 0),
                      "net.peer.name": kwargs.get("host") or kwargs.get("path"), "net.peer.port": kwargs.get("port")}
        #: round trips made and commands they carried (commands ÷ round trips: how well callers share a write)
        self.round_trips = 0
        self.commands = 0
        self._round_trips_metric = _ROUND_TRIPS.labels(name)
        self._commands_metric = _COMMANDS.labels(name)

    async def execute(self, *command: Any) -> Any:
        """Sends one command (`"GET", key`, `"EVALSHA", sha, 0, ...`) and returns its reply as the client would
        without response callbacks (bytes, ints, lists); an error reply raises its `ResponseError`."""
        return await self._put(command, asyncio.get_running_loop())

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Sends several commands in one round trip (with whatever else is queued) and returns their replies in
        order, an error reply as its exception object (like `pipeline.execute(raise_on_error=False)`). A broken
        connection or a timeout raises."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        futures = [self._put(command, loop) for command in commands]
        replies: list[Any] = []
        try:
            for f in futures:
                try:
                    replies.append(await f)
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            for f in futures:  # the round trip failed for all of them: one error is raised, the rest are read
                if f.done() and not f.cancelled():
                    f.exception()
                else:
                    f.cancel()
            raise
        return replies

    async def script(self, script: AsyncScript, args: Sequence[Any], keys: Sequence[Any] = ()) -> Any:
        """Runs a registered script (`client.register_script(...)`): EVALSHA, then EVAL once if Redis has lost it."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", script.script, len(keys), *keys, *args)

    async def script_many(self, script: AsyncScript, arg_lists: Sequence[Sequence[Any]]) -> list[Any]:
        """Runs a registered script (no keys) once per argument list, all in one round trip; returns the replies
        in order, an error reply as its exception object. Those Redis did not know the script for go again as
        EVAL. A broken connection or a timeout raises."""
        replies = await self.execute_many([("EVALSHA", script.sha, 0, *args) for args in arg_lists])
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            again = await self.execute_many([("EVAL", script.script, 0, *arg_lists[i]) for i in lost])
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        return replies

    async def close(self) -> None:
        """Fails what is queued, stops the lane's task and closes its connection; later commands fail."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail(self._queue, RedisConnectionError(f"{self.name}: lane closed"))
        self._queue = []
        await self._drop()

    # ---- internals --------------------------------------------------------------------------------------------

    def _put(self, command: Command, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        if self._closed:
            raise RedisConnectionError(f"{self.name}: lane closed")
        packed = self._pack(command)
        future: asyncio.Future[Any] = loop.create_future()
        span = None
        if telemetry.enabled():
            # as redis-py's instrumentation names and describes a command: "EVALSHA ? ? ...", no argument shown
            statement = " ".join([str(command[0]), *["?"] * (len(command) - 1)])[:1000]
            span = telemetry.ClientSpan(str(command[0]), {**self._peer, "db.statement": statement,
                                                          "db.redis.args_length": len(command)})
        self._queue.append(_Waiter(packed, future, span))
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"{self.name} lane")
        return future

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                if any(w.future.done() for w in batch):  # callers that gave up before it was sent: not sent
                    self._fail([w for w in batch if w.future.done()], asyncio.CancelledError())
                    batch = [w for w in batch if not w.future.done()]
                    if not batch:
                        continue
                try:
                    replies = await self._round_trip([w.packed for w in batch])
                except asyncio.CancelledError:
                    self._fail(batch, RedisConnectionError(f"{self.name}: lane closed"))
                    raise
                except Exception as exc:
                    self._fail(batch, exc)
                    continue
                for w, reply in zip(batch, replies, strict=True):
                    error = reply if isinstance(reply, ResponseError) else None
                    if w.span is not None:
                        w.span.set({"weir.redis.round_trip_commands": len(batch)})
                        w.span.end(type(error).__name__ if error is not None else None)
                    if w.future.done():  # the caller gave up
                        continue
                    if error is not None:
                        w.future.set_exception(error)
                    else:
                        w.future.set_result(reply)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _pack(self, command: Command) -> bytes:
        if self._hiredis:
            try:
                packed: bytes = hiredis.pack_command(tuple(command))
                return packed
            except TypeError:
                pass
        return b"".join(self._packer.pack_command(*command))

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        retried = False
        while True:
            conn = self._conn
            kept = conn is not None
            if conn is None:
                conn = self._conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
            replies: list[Any] = []
            try:
                await conn.send_packed_command(commands, check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # an error reply: read, the connection stays in step
                        replies.append(exc)
            except RedisConnectionError:
                await self._drop()
                # A connection kept from an earlier round trip that is found closed before any reply (Redis
                # restarted, an idle timeout) is the one failure where the commands did not run: once more.
                if not kept or replies or retried:
                    raise
                retried = True
                continue
            except BaseException:
                await self._drop()
                raise
            self.round_trips += 1
            self.commands += len(commands)
            self._round_trips_metric.inc()
            self._commands_metric.inc(len(commands))
            return replies

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    @staticmethod
    def _fail(batch: list[_Waiter], exc: BaseException) -> None:
        for w in batch:
            if w.span is not None:
                w.span.end(type(exc).__name__)
            if not w.future.done():
                w.future.set_exception(exc)
