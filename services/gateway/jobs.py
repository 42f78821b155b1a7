"""Background jobs: a job store, a Redis Streams queue with one consumer group, and a per-job event log.

    {P}jobs:queue          stream: one message {id} per run to do; consumer group "workers"
    {P}job:{id}            hash: status, key_id, team, model, request/control (protobuf), webhook_url, metadata,
                           created, started_at, finished_at, attempts, worker, result, error, webhook,
                           cancel, completions
    {P}jobs:hops           hash: "<hop>:sum" (ms) and "<hop>:count" over the runs of all workers
    {P}job:{id}:events     stream of events {t: type, d: JSON}; the entry ids are the SSE event ids, so a client
                           resumes after `Last-Event-ID` with one XREAD

Statuses: queued -> running -> succeeded | failed | cancelled | dead_letter (final). Delivery is at least once:
a worker takes a message with XREADGROUP and acknowledges it only once the job is final; a worker that dies
leaves its messages pending and another takes them over (XAUTOCLAIM) when they have been idle longer than the
visibility timeout (live workers keep theirs fresh with a heartbeat). Completion is exactly once: the move to a
final status, its event and the completion counter happen in one script that does nothing when the job is
already final, so two workers racing after a reclaim cannot both complete it. A job run more than
`max_attempts` times (crashes and transient errors) is dead-lettered. Final jobs and their events expire after
the result TTL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.gateway.auth import Principal
from weir.common.v1 import types_pb2
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb
from weir.kit import telemetry

GROUP = "workers"
FINAL = ("succeeded", "failed", "cancelled", "dead_letter")
FINAL_EVENT = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled", "dead_letter": "dead_letter"}
FINAL_EVENTS = frozenset(FINAL_EVENT.values())
EVENTS_KEPT = 20_000  # per job (deltas included); older ones are trimmed
_PENDING_TTL_S = 30 * 86400  # a job that never finishes still goes away eventually

_FINAL_LUA = "local function final(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' " \
             "or s == 'dead_letter' end\n"

# KEYS: job, events. ARGV: now, worker, max_attempts. Returns {verdict, attempts}:
# "missing" | "final" | "cancel" | "dead" (the caller completes it) | "run" (now running, `started` emitted).
_START = _FINAL_LUA + r"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', '0'} end
if final(st) then return {'final', '0'} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {'cancel', '0'} end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n > tonumber(ARGV[3]) then return {'dead', tostring(n)} end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'started_at', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '20000', '*', 't', 'started',
           'd', cjson.encode({attempt = n, worker = ARGV[2]}))
return {'run', tostring(n)}
"""

# KEYS: job, events. ARGV: type, data, [worker]. Appends an event unless the job is final or (when a worker is
# given) another worker now runs it. Returns 0: not appended; 1: appended; 2: appended, cancel requested.
_EMIT = _FINAL_LUA + r"""
local doc = redis.call('HMGET', KEYS[1], 'status', 'worker', 'cancel')
if not doc[1] or final(doc[1]) then return 0 end
if ARGV[3] and ARGV[3] ~= '' and doc[2] ~= ARGV[3] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '20000', '*', 't', ARGV[1], 'd', ARGV[2])
if doc[3] == '1' then return 2 end
return 1
"""

# KEYS: job, events. ARGV: status, now, ttl, event type, event data, field, value, ... Moves the job to a final
# status exactly once: returns 1 when it did, 0 when the job was already final (or is gone).
_FINISH = _FINAL_LUA + r"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st or final(st) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'completions', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '20000', '*', 't', ARGV[4], 'd', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: job, events, queue. ARGV: now, data, job id. A retry: back to queued with a new queue message (the caller
# acknowledges the old one), unless the job became final meanwhile.
_REQUEUE = _FINAL_LUA + r"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st or final(st) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '20000', '*', 't', 'queued', 'd', ARGV[2])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[3])
return 1
"""


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


@dataclass
class Event:
    """One job event: its stream id (the SSE id), type and data."""

    id: str
    type: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        return (f"id: {self.id}\nevent: {self.type}\ndata: ".encode() + orjson.dumps({"type": self.type, **self.data})
                + b"\n\n")


class JobStore:
    """Submission, reading, cancellation and completion of jobs (used by the gateway and the workers).

    `redis` serves short commands; `blocking` (no socket timeout) serves the blocking reads of event streams."""

    def __init__(self, redis: aioredis.Redis, blocking: aioredis.Redis, prefix: str, *, result_ttl_s: int,
                 webhook_private_networks: bool = False) -> None:
        #: Whether webhook URLs may name non-public addresses (WEIR_WEBHOOK_PRIVATE_NETWORKS; refused otherwise).
        self.webhook_private_networks = webhook_private_networks
        self.redis: Any = redis
        self.blocking: Any = blocking
        self.prefix = prefix
        self.queue = prefix + "jobs:queue"
        self.result_ttl_s = result_ttl_s
        self._start = redis.register_script(_START)
        self._emit = redis.register_script(_EMIT)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- submission and reading ------------------------------------------------------------------

    async def submit(self, principal: Principal, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl, *,
                     webhook_url: str = "", metadata: dict[str, str] | None = None) -> str:
        """Stores a job and queues it; returns its id. The key is stored by id, never its secret."""
        job_id = new_job_id()
        now = time.time()
        doc = {"status": "queued", "key_id": principal.key_id, "team": principal.team, "model": req.model,
               "request": req.SerializeToString(), "control": control.SerializeToString(),
               "webhook_url": webhook_url, "metadata": orjson.dumps(metadata or {}),
               "created": f"{now:.3f}", "attempts": "0", "cancel": "0", "completions": "0",
               "traceparent": telemetry.current_traceparent()}
        key, events = self.job_key(job_id), self.events_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=doc)
            pipe.expire(key, _PENDING_TTL_S)
            pipe.xadd(events, {"t": "queued", "d": orjson.dumps({"model": req.model})})
            pipe.expire(events, _PENDING_TTL_S)
            pipe.xadd(self.queue, {"id": job_id})
            await pipe.execute()
        return job_id

    async def load(self, job_id: str) -> dict[str, bytes] | None:
        if not job_id.startswith("job_") or len(job_id) != 28:
            return None
        raw = await self.redis.hgetall(self.job_key(job_id))
        return {k.decode(): v for k, v in raw.items()} if raw else None

    @staticmethod
    def view(job_id: str, doc: dict[str, bytes]) -> dict[str, Any]:
        """A job as the API shows it (never the request's key)."""
        def num(name: str) -> float | None:
            v = doc.get(name)
            return float(v) if v else None

        created, started, finished = num("created"), num("started_at"), num("finished_at")
        timings: dict[str, float] = {}
        if created is not None and started is not None:
            timings["queued_ms"] = round((started - created) * 1000, 2)
        if started is not None and finished is not None:
            timings["run_ms"] = round((finished - started) * 1000, 2)
        if created is not None and finished is not None:
            timings["total_ms"] = round((finished - created) * 1000, 2)
        out: dict[str, Any] = {
            "id": job_id, "object": "job", "status": _s(doc.get("status")), "model": _s(doc.get("model")),
            "created": created, "started_at": started, "finished_at": finished,
            "attempts": int(doc.get("attempts") or 0), "metadata": orjson.loads(doc.get("metadata") or b"{}"),
            "cancel_requested": doc.get("cancel") == b"1", "timings": timings,
            "result": orjson.loads(doc["result"]) if doc.get("result") else None,
            "error": orjson.loads(doc["error"]) if doc.get("error") else None,
        }
        if doc.get("webhook_url"):
            out["webhook"] = {"url": _s(doc.get("webhook_url")),
                              **(orjson.loads(doc["webhook"]) if doc.get("webhook") else {"status": "pending"})}
        return out

    async def events(self, job_id: str, after: str = "", block_ms: int = 5000) -> AsyncGenerator[Event | None, None]:
        """The job's events after `after` (a previous event id; empty: from the start), following the log live
        until a final event; yields None after `block_ms` without news (a keep-alive point)."""
        last = after or "0-0"
        key = self.events_key(job_id)
        while True:
            resp = await self.blocking.xread({key: last}, count=200, block=block_ms)
            if not resp:
                if not await self.redis.exists(key):
                    return
                yield None
                continue
            for entry_id, fields in resp[0][1]:
                last = entry_id.decode()
                ev = Event(last, fields[b"t"].decode(), orjson.loads(fields[b"d"]))
                yield ev
                if ev.type in FINAL_EVENTS:
                    return

    async def cancel(self, job_id: str) -> str:
        """Flags the job cancelled; a queued job is cancelled at once (it will never run), a running one by its
        worker between deltas. Returns the job's status afterwards ("" when there is no such job)."""
        key = self.job_key(job_id)
        status = _s(await self.redis.hget(key, "status"))
        if not status or status in FINAL:
            return status
        await self.redis.hset(key, "cancel", "1")
        if status == "queued":
            await self.finish(job_id, "cancelled", {"reason": "cancelled before it ran"})
        return _s(await self.redis.hget(key, "status"))

    # ---- the worker's side -----------------------------------------------------------------------

    async def start(self, job_id: str, worker: str, max_attempts: int) -> tuple[str, int]:
        verdict, n = await self._start(keys=[self.job_key(job_id), self.events_key(job_id)],
                                       args=[f"{time.time():.3f}", worker, max_attempts])
        return verdict.decode(), int(n)

    async def emit(self, job_id: str, type_: str, data: dict[str, Any], worker: str = "") -> int:
        """Appends an event for a job that is not final (and, with `worker`, still run by it): 0 not appended,
        1 appended, 2 appended and the job's cancellation was requested."""
        return int(await self._emit(keys=[self.job_key(job_id), self.events_key(job_id)],
                                    args=[type_, orjson.dumps(data), worker]))

    async def finish(self, job_id: str, status: str, event: dict[str, Any], **fields: Any) -> bool:
        """Makes the job final exactly once; False when it already was."""
        args: list[Any] = [status, f"{time.time():.3f}", self.result_ttl_s, FINAL_EVENT[status], orjson.dumps(event)]
        for name, value in fields.items():
            args += [name, value if isinstance(value, (str, bytes)) else orjson.dumps(value)]
        done = await self._finish(keys=[self.job_key(job_id), self.events_key(job_id)], args=args)
        return bool(done)

    async def requeue(self, job_id: str, data: dict[str, Any]) -> bool:
        return bool(await self._requeue(keys=[self.job_key(job_id), self.events_key(job_id), self.queue],
                                        args=[f"{time.time():.3f}", orjson.dumps(data), job_id]))

    async def record_hops(self, hops: dict[str, float]) -> None:
        """Adds one run's time per hop to the workers' shared totals (the console's latency per hop)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for hop, ms in hops.items():
                pipe.hincrbyfloat(self.prefix + "jobs:hops", f"{hop}:sum", round(ms, 3))
                pipe.hincrby(self.prefix + "jobs:hops", f"{hop}:count", 1)
            await pipe.execute()

    async def stats(self) -> dict[str, Any]:
        """Mean time per hop of the jobs run so far; queue messages waiting and taken (unacknowledged)."""
        raw = {k.decode(): float(v) for k, v in (await self.redis.hgetall(self.prefix + "jobs:hops")).items()}
        hops = [{"hop": name[:-6], "count": int(count), "mean_ms": round(raw.get(name[:-6] + ":sum", 0.0) / count, 2)}
                for name, count in sorted(raw.items()) if name.endswith(":count") and count]
        pending = await self.redis.xpending(self.queue, GROUP)
        running = int(pending["pending"])
        return {"object": "job_stats", "hops": hops,
                "queue": {"waiting": max(0, await self.redis.xlen(self.queue) - running), "running": running}}

    async def ack(self, message_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.queue, GROUP, message_id)
            pipe.xdel(self.queue, message_id)
            await pipe.execute()
