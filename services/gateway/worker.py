"""Job workers: take jobs from the queue and run each through the hub exactly like a streamed request.

`python -m services.gateway.worker` runs one worker process (scale out by starting more); the gateway can run
one too (WEIR_JOBS_IN_GATEWAY). A run is admitted with the submitting key (re-read by id: a key revoked since
submission is refused), so its limits, budgets and ledger apply; the ledger's request id is the job id.

Each running job's queue message is kept fresh by a heartbeat (XCLAIM to itself), which also notices
cancellation; messages of a worker that stopped heartbeating are taken over by another after the visibility
timeout. A run that fails transiently (5xx, an unavailable dependency) is queued again after a backoff; a job
run `max_attempts` times is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.auth import AuthError, KeyStore, StoreUnavailable
from services.gateway.core import Core
from services.gateway.hub import Decision, Hub
from services.gateway.jobs import GROUP, JobStore
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai_wire import ApiError, usage_json
from services.gateway.policy import Admission
from services.gateway.pricing import Pricing, usd
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import Webhooks
from weir.common.v1 import types_pb2
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb
from weir.kit import semconv as sc
from weir.kit import tasks, telemetry
from weir.kit.config import load_or_exit
from weir.kit.server import run_process, wait_for_stop_signal, write_ready_file
from weir.reasoner.v1 import reasoner_service_pb2 as reasoner_pb

log = logging.getLogger("weir.gateway.worker")


class _Superseded(Exception):
    """The job became final or another worker took it over: stop without touching it."""


class _CancelRequested(Exception):
    """The job's cancellation was requested."""


@dataclass
class _Running:
    job_id: str
    task: asyncio.Task[Any]
    cancel_requested: bool = False


@dataclass
class _Run:
    """What one run produced so far."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)


def _attempt_json(a: reasoner_pb.Attempt) -> dict[str, Any]:
    return {"model": a.target.model, "provider": a.target.provider, "http_status": a.http_status,
            "outcome": a.outcome, "latency_ms": round(a.latency_ms, 2)}


def _error_json(err: ApiError) -> dict[str, Any]:
    return {"status": err.status, "message": err.message, "type": err.type, "code": err.code}


class JobWorker:
    def __init__(self, settings: GatewaySettings, hub: Hub, keys: KeyStore, store: JobStore, blocking: Any,
                 webhooks: Webhooks, *, name: str = "") -> None:
        self.settings = settings
        self.hub = hub
        self.keys = keys
        self.store = store
        self.blocking = blocking  # redis client without a socket timeout, for XREADGROUP BLOCK
        self.webhooks = webhooks
        self.pricing: Pricing = hub.policy.pricing
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.visibility_ms = int(settings.jobs_visibility_timeout_s * 1000)
        self._running: dict[str, _Running] = {}  # queue message id -> run
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.ensure_group()
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._consume())
        self._beat_task = tasks.every(min(1.0, self.settings.jobs_visibility_timeout_s / 3), self._heartbeat,
                                      "job heartbeat")
        log.info("job worker started", extra={"worker": self.name, "concurrency": self.settings.jobs_concurrency})

    async def close(self, grace_s: float = 5.0) -> None:
        """Stops taking jobs and lets running ones finish within `grace_s`; the rest stay pending for another
        worker to take over."""
        self._stopping = True
        await tasks.stop(self._loop_task)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        await tasks.stop(self._beat_task)
        await self.webhooks.close()

    # ---- taking messages -------------------------------------------------------------------------

    async def _consume(self) -> None:
        last_claim = 0.0
        while not self._stopping:
            free = self.settings.jobs_concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages: list[tuple[bytes, dict[bytes, bytes]]] = []
                if time.monotonic() - last_claim >= self.settings.jobs_visibility_timeout_s / 4:
                    last_claim = time.monotonic()
                    claimed = await self.store.redis.xautoclaim(self.store.queue, GROUP, self.name,
                                                                self.visibility_ms, "0-0", count=free)
                    messages = [m for m in claimed[1] if m[1]]
                    if messages:
                        log.info("reclaimed jobs from a stalled worker", extra={"count": len(messages)})
                if not messages:
                    resp = await self.blocking.xreadgroup(GROUP, self.name, {self.store.queue: ">"}, count=free,
                                                          block=1000)
                    messages = resp[0][1] if resp else []
            except (RedisError, OSError) as exc:
                log.warning("job queue unavailable", extra={"error": type(exc).__name__})
                await asyncio.sleep(1.0)
                continue
            for message_id, fields in messages:
                self._spawn(message_id.decode(), fields[b"id"].decode())

    def _spawn(self, message_id: str, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(message_id, job_id))
        self._running[message_id] = _Running(job_id, task)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if self._running.get(message_id, None) is not None and self._running[message_id].task is t:
                del self._running[message_id]

        task.add_done_callback(done)

    async def _heartbeat(self) -> None:
        """Keeps this worker's messages fresh (so nobody reclaims them) and notices cancellations (one beat)."""
        running = dict(self._running)
        if not running:
            return
        try:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.xclaim(self.store.queue, GROUP, self.name, 0, list(running), justid=True)
                for r in running.values():
                    pipe.hget(self.store.job_key(r.job_id), "cancel")
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("job heartbeat failed", extra={"error": type(exc).__name__})
            return
        for r, flag in zip(running.values(), results[1:], strict=True):
            if flag == b"1" and not r.cancel_requested:
                r.cancel_requested = True
                r.task.cancel()

    # ---- one message -----------------------------------------------------------------------------

    async def _handle(self, message_id: str, job_id: str) -> None:
        try:
            await self._handle_inner(message_id, job_id)
        except asyncio.CancelledError:
            r = self._running.get(message_id)
            if r is not None and r.cancel_requested and not self._stopping:
                await self._cancelled(message_id, job_id)
                return
            raise
        except (RedisError, OSError) as exc:
            # Left pending: another worker (or this one) takes it over after the visibility timeout.
            log.warning("job store unavailable; the job will be taken over later",
                        extra={"job_id": job_id, "error": type(exc).__name__})

    async def _cancelled(self, message_id: str, job_id: str) -> None:
        if await self.store.finish(job_id, "cancelled", {"reason": "cancelled while running"}):
            await self._notify(job_id)
        await self.store.ack(message_id)

    async def _handle_inner(self, message_id: str, job_id: str) -> None:
        store = self.store
        verdict, attempt = await store.start(job_id, self.name, self.settings.jobs_max_attempts)
        if verdict == "final":
            # Finished elsewhere: cancelled while queued, or by a worker that died before it acknowledged (or
            # before its webhook went out: deliveries are at least once, receivers dedupe on X-Weir-Job-Id).
            doc = await store.load(job_id)
            if doc is not None and doc.get("webhook_url") and not doc.get("webhook"):
                self.webhooks.deliver(job_id, doc)
        if verdict in ("missing", "final"):
            await store.ack(message_id)
            return
        if verdict == "cancel":
            await self._cancelled(message_id, job_id)
            return
        if verdict == "dead":
            last = (await store.load(job_id) or {}).get("last_error")
            error = {"status": 500, "type": "dead_letter", "code": "max_attempts_exceeded",
                     "message": f"the job was started {attempt - 1} times without finishing"}
            if await store.finish(job_id, "dead_letter", {"error": error}, error=error,
                                  last_error=last or b""):
                await self._notify(job_id)
            await store.ack(message_id)
            return
        job = await store.load(job_id)
        if job is None:
            await store.ack(message_id)
            return
        try:
            await self._execute(job_id, job)
        except _Superseded:
            return
        except _CancelRequested:
            await self._cancelled(message_id, job_id)
            return
        except ApiError as err:
            if err.status < 500:
                error = _error_json(err)
                if await store.finish(job_id, "failed", {"error": error}, error=error):
                    await self._notify(job_id)
                await store.ack(message_id)
                return
            await self._retry(message_id, job_id, attempt, _error_json(err))
            return
        except (StoreUnavailable, RedisError, OSError) as exc:
            await self._retry(message_id, job_id, attempt, {"status": 503, "type": "service_unavailable",
                                                            "message": str(exc) or type(exc).__name__})
            return
        await store.ack(message_id)
        await self._notify(job_id)

    async def _retry(self, message_id: str, job_id: str, attempt: int, error: dict[str, Any]) -> None:
        store = self.store
        await store.redis.hset(store.job_key(job_id), "last_error", orjson.dumps(error))
        if attempt >= self.settings.jobs_max_attempts:
            final = {"status": 500, "type": "dead_letter", "code": "max_attempts_exceeded",
                     "message": f"gave up after {attempt} attempts; last error: {error['message']}"}
            if await store.finish(job_id, "dead_letter", {"error": final, "last_error": error}, error=final):
                await self._notify(job_id)
            await store.ack(message_id)
            return
        delay = self.settings.jobs_retry_backoff_ms / 1000 * 2 ** (attempt - 1)
        if await store.emit(job_id, "retry", {"attempt": attempt, "error": error, "delay_ms": round(delay * 1000)},
                            self.name) == 0:
            return
        await asyncio.sleep(delay)
        await store.requeue(job_id, {"attempt": attempt + 1, "reason": "retry"})
        await store.ack(message_id)

    async def _emit(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        verdict = await self.store.emit(job_id, type_, data, self.name)
        if verdict == 0:
            raise _Superseded()
        if verdict == 2:
            raise _CancelRequested()

    async def _execute(self, job_id: str, doc: dict[str, bytes]) -> None:
        """One run of the job, in the trace of the request that submitted it."""
        with telemetry.continue_trace("job run", doc.get("traceparent", b"").decode(),
                                      {"weir.job.id": job_id, sc.WEIR_TENANT: doc.get("team", b"").decode()}):
            await self._run(job_id, doc)

    async def _run(self, job_id: str, doc: dict[str, bytes]) -> None:
        """One run of the job through the hub's streamed path; completes it unless it was superseded."""
        req = types_pb2.ChatRequest.FromString(doc["request"])
        control = gateway_pb.CacheControl.FromString(doc["control"])
        req.stream = True
        try:
            digest, key_preview = await self.keys.for_job(doc["key_id"].decode())
        except StoreUnavailable:
            raise
        except AuthError as exc:
            raise ApiError(401, str(exc), type="authentication_error", code="invalid_api_key") from exc
        control.preview = control.preview or key_preview
        adm = await self.hub.admit("", req, control, digest=digest)
        adm.request_id = job_id
        adm.hold = True  # settled below, once it is known whether this run completes the job
        superseded = False
        try:
            if not await self._answer(job_id, adm, req, control):
                raise _Superseded()
        except _Superseded:
            superseded = True
            raise
        finally:
            self.hub.policy.release(adm, superseded=superseded)

    async def _answer(self, job_id: str, adm: Admission, req: types_pb2.ChatRequest,
                      control: gateway_pb.CacheControl) -> bool:
        """Runs the request and completes the job with its answer; False if another run completed it first."""
        async def decided(d: Decision) -> None:
            await self._emit(job_id, "cache", {"tier": d.cache, "reason": d.cache_reason})
            if d.preview is not None and d.answer is None:
                # Unverified: shown first, marked provisional, and replaced by the real answer that follows.
                await self._emit(job_id, "preview", {"provisional": True, "content": d.preview.content,
                                                     "model": d.preview.model, "reason": d.cache_reason})
            if d.plan:
                await self._emit(job_id, "route", {"model": d.plan[0].model, "reason": d.route_reason,
                                                   "plan": [t.model for t in d.plan]})

        try:
            session = await self.hub.stream(adm, req, control, decided)
        except ApiError as err:
            for a in err.attempts:
                await self._emit(job_id, "attempt", _attempt_json(a))
            raise
        run = _Run()
        end: reasoner_pb.Done | None = None
        d = session.decision
        try:
            for a in session.attempts:
                await self._emit(job_id, "attempt", _attempt_json(a))
            if d.plan and session.model != d.plan[0].model:
                await self._emit(job_id, "fallback", {"from": d.plan[0].model, "model": session.model})
            async for ev in session.events:
                if ev.attempt is not None:
                    await self._emit(job_id, "attempt", _attempt_json(ev.attempt))
                elif ev.end is not None:
                    end = ev.end
                    break
                else:
                    if ev.reasoning:
                        run.reasoning.append(ev.reasoning)
                        await self._emit(job_id, "reasoning", {"text": ev.reasoning})
                    if ev.content:
                        run.content.append(ev.content)
                        await self._emit(job_id, "delta", {"text": ev.content})
        finally:
            await session.aclose()
        if end is None:
            raise ApiError(502, "the answer ended before it was complete", type="upstream_error")
        model = end.model or session.model
        cost = usd(self.pricing.cost(model, end.usage)) if d.answer is None else 0.0
        usage = usage_json(end.usage)
        await self._emit(job_id, "usage", {"usage": usage, "cost_usd": cost, "model": model})
        result = {"content": "".join(run.content), "reasoning": "".join(run.reasoning), "model": model,
                  "finish_reason": end.finish_reason or "stop", "usage": usage, "cost_usd": cost,
                  "cache": d.cache, "cache_reason": d.cache_reason, "route_reason": d.route_reason,
                  "hops_ms": {k: round(v, 2) for k, v in d.timings.hops.items()}}
        if not await self.store.finish(job_id, "succeeded", {"result": result}, result=result):
            return False
        await self.store.record_hops(d.timings.hops)
        return True

    async def _notify(self, job_id: str) -> None:
        doc = await self.store.load(job_id)
        if doc is not None and doc.get("webhook_url"):
            self.webhooks.deliver(job_id, doc)


class WorkerProcess:
    """Everything one worker process needs, built from the gateway's settings."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=1.0)
        self.blocking = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0)
        self.keys = KeyStore(self.redis, settings.master_key, settings.redis_prefix)
        self.core = Core(settings, self.keys, GatewayMetrics(), self.blocking)
        self.policy, self.hub = self.core.policy, self.core.hub
        self.store = JobStore(self.redis, self.blocking, settings.redis_prefix, result_ttl_s=settings.jobs_result_ttl_s,
                              webhook_private_networks=settings.webhook_private_networks)
        self.worker = JobWorker(settings, self.hub, self.keys, self.store, self.blocking,
                                Webhooks(self.store, self.keys, settings))

    async def start(self) -> None:
        await self.core.start()
        await self.worker.start()

    async def close(self, grace_s: float) -> None:
        await self.worker.close(grace_s)
        await self.core.close()
        for client in (self.redis, self.blocking):
            await client.aclose()


def main() -> None:
    settings = load_or_exit(GatewaySettings, "worker")

    async def run() -> None:
        proc = WorkerProcess(settings)
        await proc.start()
        write_ready_file(settings.server.ready_file, worker=proc.worker.name)
        await wait_for_stop_signal()
        await proc.close(settings.server.grace_s)

    run_process("worker", settings.server, run)


if __name__ == "__main__":
    main()
