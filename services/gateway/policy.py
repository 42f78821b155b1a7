"""Who may spend which tokens, and the books: admission before the call, settlement after it.

One request costs two Redis round trips, each an atomic script (see lua.py):

* admit (on the request path): authenticates the key (revocation takes effect on the very next request, on
  every replica: nothing is cached for that), checks its model list, trims and checks the key's and the team's
  sliding one-minute windows (requests and tokens) and period budgets, and reserves the estimate: prompt tokens
  counted offline plus `max_tokens` (or a default), priced at the dearest model the request may reach.
* settle (after the answer, off the response path): replaces the reservation with the real usage (a cache hit
  spends a request but no tokens; an error releases the tokens; a cancelled stream is charged what was
  streamed), corrects the budget counters and adds the request to the ledger.

When the token window or the budget refuses a request that the cache could answer, it is admitted "cache only":
the exact tier is consulted, a hit is served (it costs nothing), a miss gets the refusal.

Redis unavailable: rate limits fail open and budgets fail closed by default (both configurable); a key can then
only be checked against the last answer this replica had for it (dropped when an admin changes the key, via
pub/sub), and an unknown key is refused. The response says which in `x-weir-policy`, and the log says so once
a second at most. Calls are bounded by a short socket timeout and a breaker, so the policy never hangs a request.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.gateway import lua
from services.gateway.auth import DEFAULT_TEAM, MASTER_KEY_ID, KeyStore, Principal, hash_key
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai_wire import ApiError
from services.gateway.pricing import Pricing, usd
from services.gateway.timings import Timings
from weir.common.v1 import types_pb2
from weir.kit import tasks
from weir.kit.redis_lane import RedisLane

log = logging.getLogger("weir.gateway.policy")

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_SNAPSHOTS_MAX = 50_000
_KINDS = {"requests": "rpm", "tokens": "tpm", "insufficient_quota": "budget"}


def duration(ms: float) -> str:
    """OpenAI's rate-limit reset format: "120ms", "8.6s", "6m0s"."""
    ms = max(0.0, ms)
    if ms < 1000:
        return f"{math.ceil(ms)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g}s"
    s = math.ceil(ms / 1000)
    return f"{s // 60}m{s % 60}s"


def money(nano_usd: int) -> str:
    """Nano-dollars as dollars with at least two and at most nine decimals: "0.25", "0.000375"."""
    text = f"{usd(nano_usd):.9f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.partition(".")[2]))


def period_end(period_id: str) -> int:
    """Unix time at which a budget period ("d20250131" or "m202501", UTC) ends."""
    if period_id.startswith("d"):
        day = time.strptime(period_id[1:], "%Y%m%d")
        return calendar.timegm(day) + 86400
    year, month = int(period_id[1:5]), int(period_id[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


@dataclass
class Ticket:
    """What an admission reserved, so settlement can correct exactly that."""

    id: str
    key_id: str
    team: str
    model: str
    mask: int = 0
    tokens: int = 0
    cost: int = 0
    key_period: str = ""
    team_period: str = ""
    day: str = ""
    month: str = ""
    deployment: str = ""


@dataclass
class Admission:
    """An admitted request: who, what was reserved, and the headers every answer to it carries."""

    principal: Principal
    ticket: Ticket | None
    headers: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    refusal: ApiError | None = None  # cache-only: raise this unless the exact cache answers
    request_id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    settled: bool = False
    # A job run holds its settlement until the job's completion is decided (worker.py): a run that lost the race
    # to complete the job (it was reclaimed while still running) is recorded as "superseded", not as a second "ok".
    hold: bool = False
    held: tuple[Settlement, Timings] | None = None
    # An exact-tier lookup started with the admission for the team the key belonged to last time (hub.py):
    # (that team, the task). Used only if the admitted team is the same.
    prefetch: tuple[str, Any] | None = None

    def take_prefetch(self, team: str) -> Any:
        """The exact-tier lookup started with the admission, if it was for `team` (else it is cancelled); once."""
        started, self.prefetch = self.prefetch, None
        if started is None:
            return None
        if started[0] == team:
            return started[1]
        started[1].cancel()
        return None

    def error(self, err: ApiError) -> ApiError:
        """`err` carrying this admission's rate-limit headers and request id."""
        err.headers = {**self.headers, "x-request-id": self.request_id, **(err.headers or {})}
        return err


@dataclass
class Settlement:
    """How a request ended: billable usage (zero for cache hits), what the cache saved, how long it took."""

    status: str  # ok | error | cancelled | refused | superseded (a job run whose job another run completed)
    model: str
    cache: str
    usage: types_pb2.Usage = field(default_factory=types_pb2.Usage)
    saved_model: str = ""
    saved_usage: types_pb2.Usage | None = None
    request_id: str = ""
    release: bool = False  # take the request out of the windows too (a cache-only request that missed)


@dataclass(frozen=True)
class _Snapshot:
    """The last answer Redis gave for a key, used only while Redis cannot be reached."""

    principal: Principal
    limited: bool
    budgeted: bool


class Policy:
    def __init__(self, redis: aioredis.Redis, listener: aioredis.Redis, keys: KeyStore, pricing: Pricing,
                 metrics: GatewayMetrics, *, prefix: str, default_max_tokens: int, limits_fail_open: bool,
                 budgets_fail_open: bool, events_kept: int, usage_retention_days: int) -> None:
        self.redis = redis
        self._listener_redis = listener
        self.keys = keys
        self.pricing = pricing
        self.metrics = metrics
        self.prefix = prefix
        self.default_max_tokens = default_max_tokens
        self.limits_fail_open = limits_fail_open
        self.budgets_fail_open = budgets_fail_open
        self.events_kept = str(events_kept)
        self.retention_s = str(usage_retention_days * 86400)
        self._admit = redis.register_script(lua.ADMIT)
        self._settle = redis.register_script(lua.SETTLE)
        self._deploy = redis.register_script(lua.DEPLOY)
        # The per-request scripts (admission, deployment windows, settlement) share one pipelined connection.
        self.lane = RedisLane(redis, "policy")
        self._snapshots: dict[str, _Snapshot] = {}
        self._down_until = 0.0
        self._last_log: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: list[list[Any]] = []
        self._listener: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await tasks.stop(self._listener)
        await self.lane.close()

    async def _listen(self) -> None:
        """Drops local snapshots of keys an admin changed (any replica), so a revoked key stays refused even
        while Redis is down. On (re)subscribing every snapshot is dropped: changes may have been missed while
        the subscription was down (snapshots are taken again from the next successful admissions)."""
        channel = self.keys.changes_channel
        while True:
            try:
                async with self._listener_redis.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(channel)
                    self._snapshots.clear()
                    while True:
                        msg = await ps.get_message(timeout=5.0)
                        if msg is None:
                            continue
                        kid = msg["data"].decode()
                        if kid == "*":
                            self._snapshots.clear()
                        else:
                            for digest in [d for d, s in self._snapshots.items() if s.principal.key_id == kid]:
                                self._snapshots.pop(digest, None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_once(self, what: str, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(what, 0.0) >= 1.0:
            self._last_log[what] = now
            log.warning(message, extra=extra)

    # ---- admission -----------------------------------------------------------------------------

    def completion_reservation(self, req: types_pb2.ChatRequest) -> int:
        return req.sampling.max_tokens if req.sampling.HasField("max_tokens") else self.default_max_tokens

    def known_team(self, raw_key: str, digest: str = "") -> str:
        """The team of the key as of its last admission in this process ("" if not seen): a guess, for work that
        may start before the admission answers and is dropped when the admitted team differs."""
        digest = digest or hash_key(raw_key)
        if self.keys.is_master(digest):
            return self.keys.master.team
        snap = self._snapshots.get(digest)
        return snap.principal.team if snap is not None else ""

    async def admit(self, raw_key: str, model: str, prompt_tokens: int, completion_tokens: int,
                    cacheable: bool, timings: Timings, *, digest: str = "") -> Admission:
        """Admits a request by its raw key, or by the key's stored digest (a background job's key)."""
        if not raw_key and not digest:
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`", type="authentication_error",
                           code="invalid_api_key")
        digest = digest or hash_key(raw_key)
        day, month = time.strftime("%Y%m%d|%Y%m", time.gmtime()).split("|")
        ticket = Ticket(id=secrets.token_hex(8), key_id=MASTER_KEY_ID, team=DEFAULT_TEAM, model=model, day=day,
                        month=month, key_period="m" + month)
        if self.keys.is_master(digest):
            return Admission(self.keys.master, ticket, {}, prompt_tokens, completion_tokens, timings)
        reserve = prompt_tokens + completion_tokens
        cost = self.pricing.estimate(model, prompt_tokens, completion_tokens)
        since = time.perf_counter()
        try:
            if time.monotonic() < self._down_until:
                raise RedisConnectionError("policy store marked down")
            r = await self.lane.script(self._admit, [
                self.prefix, digest, ",".join(self.pricing.allowing(model)), reserve, cost, ticket.id, day, month,
                1 if cacheable else 0, model, self.retention_s])
        except _UNAVAILABLE as exc:
            self._down_until = time.monotonic() + 0.5
            return self._degraded(digest, model, prompt_tokens, completion_tokens, timings, exc)
        finally:
            timings.add("policy", since)
        fields = r.decode().split("|")
        status = fields[0]
        if status == "unknown":
            self._snapshots.pop(digest, None)
            raise ApiError(401, "invalid API key", type="authentication_error", code="invalid_api_key")
        kid, team, admin, models = fields[1:5]
        principal = Principal(key_id=kid, team=team, admin=admin == "1",
                              allowed_models=tuple(m for m in models.split(",") if m))
        if status == "revoked":
            self._snapshots.pop(digest, None)
            raise ApiError(401, f"API key {kid} has been revoked", type="authentication_error",
                           code="invalid_api_key")
        if status == "model_not_allowed":
            self.metrics.refusals.labels("model_not_allowed").inc()
            raise ApiError(403, f"this key may not use model {model!r}; allowed: {models.replace(',', ', ')}",
                           type="permission_error", param="model", code="model_not_allowed")
        reason = fields[5]
        mask, rl, rr, rreset, tl, tr, treset, retry, bl, br = (int(v) for v in fields[6:16])
        key_period, team_period = fields[16], fields[17]
        if len(self._snapshots) >= _SNAPSHOTS_MAX:
            self._snapshots.clear()
        self._snapshots[digest] = _Snapshot(principal, fields[18] == "1", fields[19] == "1")
        headers = _limit_headers(rl, rr, rreset, tl, tr, treset, bl, br)
        if status == "ok" or status == "cache_only":
            ticket.key_id, ticket.team, ticket.mask = kid, team, mask
            ticket.key_period, ticket.team_period = key_period, team_period
            refusal = None
            if status == "ok":
                ticket.tokens, ticket.cost = reserve, cost
            else:
                refusal = self._refusal(reason, principal, fields, reserve, prompt_tokens, completion_tokens,
                                        cost, retry, headers)
            return Admission(principal, ticket, headers, prompt_tokens, completion_tokens, timings, refusal)
        err = self._refusal(reason, principal, fields, reserve, prompt_tokens, completion_tokens, cost, retry,
                            headers)
        self.metrics.refusals.labels(_KINDS.get(err.type, "too_large")).inc()
        raise err

    def _refusal(self, reason: str, p: Principal, r: list[str], reserve: int, prompt: int, completion: int,
                 cost: int, retry_ms: int, headers: dict[str, str]) -> ApiError:
        status = r[0]
        if status == "rpm":
            kind, scope = "rpm", reason
        elif status == "too_large":
            kind, (scope, _, tpm) = "too_large", reason.partition(":")
        else:
            kind, _, scope = reason.partition(":")
        who = f"key {p.key_id}" if scope == "key" else f"team {p.team}"
        if kind == "too_large":
            return ApiError(400, f"request too large for the tokens-per-minute limit of {who}: it needs up to "
                                 f"{reserve} tokens ({prompt} prompt + {completion} completion) and the limit is "
                                 f"{tpm}; lower max_tokens or shorten the prompt",
                            param="max_tokens", code="request_too_large", headers=headers)
        retry_headers = {"Retry-After": str(max(1, math.ceil(retry_ms / 1000))), "retry-after-ms": str(retry_ms)}
        if kind == "rpm":
            return ApiError(429, f"rate limit reached for requests per minute on {who}; try again in "
                                 f"{duration(retry_ms)}", type="requests", code="rate_limit_exceeded",
                            headers={**headers, **retry_headers})
        if kind == "tpm":
            return ApiError(429, f"rate limit reached for tokens per minute on {who}: this request reserves "
                                 f"{reserve} tokens ({prompt} prompt + {completion} completion); try again in "
                                 f"{duration(retry_ms)}", type="tokens", code="rate_limit_exceeded",
                            headers={**headers, **retry_headers})
        limit, remaining, period = int(r[14]), int(r[15]), r[20]
        ends = period_end(period)
        wait = max(1, ends - int(time.time()))
        span = "daily" if period.startswith("d") else "monthly"
        return ApiError(
            429, f"budget exhausted for {who}: ${money(max(0, remaining))} left of the {span} budget of "
                 f"${money(limit)}, and this request could cost up to ${money(cost)}; the budget resets at "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ends))}",
            type="insufficient_quota", code="insufficient_quota",
            headers={**headers, "Retry-After": str(wait), "x-weir-budget-reset": duration(wait * 1000)})

    def _degraded(self, digest: str, model: str, prompt_tokens: int, completion_tokens: int, timings: Timings,
                  exc: BaseException) -> Admission:
        snap = self._snapshots.get(digest)
        closed = {"x-weir-policy": "degraded-fail-closed", "Retry-After": "1"}
        if snap is None:
            self.metrics.degraded.labels("fail-closed").inc()
            self._log_once("unknown", "policy store unavailable; refusing a key this replica cannot check",
                           error=type(exc).__name__, policy="degraded-fail-closed")
            raise ApiError(503, "the key store is unavailable and this key cannot be checked; try again shortly",
                           type="service_unavailable", code="policy_unavailable", headers=closed)
        p = snap.principal
        if p.allowed_models and not set(self.pricing.allowing(model)) & set(p.allowed_models):
            raise ApiError(403, f"this key may not use model {model!r}; allowed: {', '.join(p.allowed_models)}",
                           type="permission_error", param="model", code="model_not_allowed")
        if (snap.budgeted and not self.budgets_fail_open) or (snap.limited and not self.limits_fail_open):
            what = "budgets" if snap.budgeted and not self.budgets_fail_open else "rate limits"
            self.metrics.degraded.labels("fail-closed").inc()
            self._log_once("closed", f"policy store unavailable; {what} fail closed, request refused",
                           error=type(exc).__name__, key_id=p.key_id, policy="degraded-fail-closed")
            raise ApiError(503, f"the policy store is unavailable and this key's {what} fail closed; try again "
                                "shortly", type="service_unavailable", code="policy_unavailable", headers=closed)
        self.metrics.degraded.labels("fail-open").inc()
        self._log_once("open", "policy store unavailable; admitted without limits (fail-open)",
                       error=type(exc).__name__, key_id=p.key_id, policy="degraded-fail-open")
        return Admission(p, None, {"x-weir-policy": "degraded-fail-open"}, prompt_tokens, completion_tokens, timings)

    # ---- deployments -----------------------------------------------------------------------------

    async def pick_deployment(self, adm: Admission, plan: list[types_pb2.RouteTarget]) -> list[types_pb2.RouteTarget]:
        """Per-deployment limits (rpm/tpm of a model in the table): the plan starts at the first target whose
        window has room, which is reserved; refused when none has."""
        deployments = self.pricing.deployments
        t = adm.ticket
        if not deployments or t is None or not any(target.model in deployments for target in plan):
            return plan
        args: list[Any] = [self.prefix, t.id, adm.prompt_tokens + adm.completion_tokens]
        for target in plan:
            m = deployments.get(target.model)
            args += [target.model, m.rpm if m else 0, m.tpm if m else 0]
        try:
            index, reserved = (int(v) for v in await self.lane.script(self._deploy, args))
        except _UNAVAILABLE as exc:
            if self.limits_fail_open:
                self._log_once("deploy", "policy store unavailable; deployment limits not applied (fail-open)",
                               error=type(exc).__name__, policy="degraded-fail-open")
                return plan
            raise adm.error(ApiError(503, "the policy store is unavailable; deployment limits fail closed",
                                     type="service_unavailable", code="policy_unavailable",
                                     headers={"x-weir-policy": "degraded-fail-closed", "Retry-After": "1"})) from exc
        if index == 0:
            self.metrics.refusals.labels("deployment").inc()
            models = ", ".join(target.model for target in plan)
            raise adm.error(ApiError(
                429, f"every deployment that could answer ({models}) is at its configured rate limit; try again in "
                     f"{duration(reserved)}", type="requests", code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(reserved / 1000))), "retry-after-ms": str(reserved)}))
        if reserved:
            t.deployment = self.prefix + "rl:d:" + plan[index - 1].model
        return plan[index - 1:]

    # ---- settlement ------------------------------------------------------------------------------

    def settle(self, adm: Admission, s: Settlement, timings: Timings) -> None:
        """Records how the request ended (metrics now, Redis in the background); idempotent per admission."""
        if adm.settled:
            return
        if adm.hold:
            if adm.held is None:
                adm.held = (s, timings)
            return
        adm.settled = True
        t = adm.ticket
        usage = s.usage
        cost = self.pricing.cost(s.model, usage) if s.model else 0
        saved_tokens = saved = 0
        if s.saved_usage is not None:
            saved_tokens = s.saved_usage.prompt_tokens + s.saved_usage.completion_tokens
            saved = self.pricing.cost(s.saved_model, s.saved_usage)
        if s.status == "refused" and adm.refusal is not None:
            self.metrics.refusals.labels(_KINDS.get(adm.refusal.type, "other")).inc()
        total_ms = timings.total()
        model = s.model or (t.model if t is not None else "")
        self.metrics.observe(s.status, s.cache, model, usage, usd(cost), saved_tokens, usd(saved), timings.hops,
                             total_ms)
        if t is None:
            return
        tokens = -1 if s.release else usage.prompt_tokens + usage.completion_tokens
        model = model.replace("|", "_")
        event = orjson.dumps({
            "ts": round(time.time(), 3), "id": s.request_id, "key": t.key_id, "team": t.team, "model": model,
            "requested": t.model, "status": s.status, "cache": s.cache, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "cached_tokens": usage.cached_tokens,
            "cost_usd": usd(cost), "saved_tokens": saved_tokens, "saved_usd": usd(saved),
            "latency_ms": round(total_ms, 2), "reserved_tokens": t.tokens, "reserved_usd": usd(t.cost)})
        metrics = [("requests", 1), ("errors", int(s.status != "ok")), ("prompt_tokens", usage.prompt_tokens),
                   ("completion_tokens", usage.completion_tokens), ("cached_tokens", usage.cached_tokens),
                   ("cost_nusd", cost), ("saved_tokens", saved_tokens), ("saved_nusd", saved),
                   ("hits_" + s.cache, int(s.cache != "miss")), ("latency_ms", round(total_ms))]
        answered = self.prefix + "rl:d:" + s.model if s.model in self.pricing.deployments and tokens > 0 else ""
        args: list[Any] = [
            self.prefix, t.key_id, t.team, t.id, t.mask, t.tokens, tokens, t.cost, cost, t.key_period,
            t.team_period, t.day, t.month, f"{t.team}|{t.key_id}|{model}|", event, self.events_kept,
            self.retention_s, t.deployment, answered]
        for name, value in metrics:
            if value:
                args += [name, value]
        self._pending.append(args)
        if len(self._pending) == 1:
            self._spawn(self._flush())

    def release(self, adm: Admission, *, superseded: bool = False) -> None:
        """Writes the settlement `adm.hold` kept back. With `superseded` (another run of the job completed it or
        took it over), a run that completed or was cut for that reason is recorded as "superseded": its tokens
        were spent all the same, so they are charged."""
        adm.hold = False
        if adm.held is None:
            return
        s, timings = adm.held
        adm.held = None
        if superseded and s.status in ("ok", "cancelled"):
            s = replace(s, status="superseded")
        self.settle(adm, s, timings)

    async def _flush(self) -> None:
        """Writes the settlements queued so far in one pipelined round trip (they pile up while one is out)."""
        batch, self._pending = self._pending, []
        try:
            results = await self.lane.script_many(self._settle, batch)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        except (RedisError, OSError) as exc:
            self.metrics.ledger_failures.inc(len(batch))
            self._log_once("settle", "settlement not written; reservations stay charged until their window or "
                                     "period ends", error=type(exc).__name__, requests=len(batch))


def _limit_headers(rl: int, rr: int, rreset: int, tl: int, tr: int, treset: int, bl: int, br: int) -> dict[str, str]:
    h: dict[str, str] = {}
    if rl > 0:
        h["x-ratelimit-limit-requests"] = str(rl)
        h["x-ratelimit-remaining-requests"] = str(max(0, rr))
        h["x-ratelimit-reset-requests"] = duration(rreset)
    if tl > 0:
        h["x-ratelimit-limit-tokens"] = str(tl)
        h["x-ratelimit-remaining-tokens"] = str(max(0, tr))
        h["x-ratelimit-reset-tokens"] = duration(treset)
    if bl > 0:
        h["x-weir-budget-limit-usd"] = f"{usd(bl):.6f}"
        h["x-weir-budget-remaining-usd"] = f"{usd(max(0, br)):.6f}"
    return h
