"""The reasoner: runs a chat request along the router's plan, with retries, fallbacks and streaming.

Per target, transient failures (429, 5xx, connection errors, broken streams that sent nothing yet) are
retried with exponential backoff and jitter, honouring Retry-After up to a cap; then the next target is
tried. A timeout (no response, no first token) moves on to the next target at once: a hung deployment
would cost a whole timeout per retry (it is retried only when no other target is left). A context-length
error skips to a later target with a larger window; content-filter refusals end the request at once, and
so do other 400s from the first target called (a fallback tried only because an earlier target failed that
rejects the request, e.g. a parameter it does not support, is skipped instead).

Each deployment has a circuit breaker (breaker.py): after N consecutive failed calls it is skipped without a
call ("circuit_open" attempts) until a cool-down ends and one probe call gets through.

Identical concurrent requests (same non-empty coalesce_key, tenant and plan) share one upstream call
(coalesce.py); the copies the other callers get are marked `coalesced`.

A stream is: failed `attempt`s, then `started` (the answering target, sent with its first delta), `delta`s, and
`done`. Once `started` went out the target is fixed: if its stream breaks (cut, stalled, malformed, no end
marker) the call ends with ABORTED / STREAM_INTERRUPTED instead of `done`; before that, breaks are retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Hashable
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import orjson

from services.reasoner import providers as p
from services.reasoner.breaker import Breakers, Permit
from services.reasoner.coalesce import StreamFlights, UnaryFlights
from services.reasoner.settings import ReasonerSettings
from services.reasoner.upstream import Upstream
from weir.chat import violations
from weir.common.v1 import types_pb2
from weir.kit import metrics, telemetry
from weir.kit import semconv as sc
from weir.kit.clients import ServiceClient
from weir.kit.errors import WeirError, invalid_argument
from weir.mesh_config import MeshConfig, Model
from weir.reasoner.v1 import reasoner_service_pb2 as pb
from weir.reasoner.v1 import reasoner_service_pb2_grpc as pb_grpc
from weir.router.v1 import router_service_pb2, router_service_pb2_grpc

log = logging.getLogger("weir.reasoner")

# Outcomes that say nothing about the target's health (the request itself was the problem).
_REQUEST_FAULTS = frozenset({"context_length", "content_filtered", "bad_request"})


@dataclass(frozen=True)
class Target:
    """A plan entry resolved against the mesh config."""

    route: types_pb2.RouteTarget
    model: Model
    upstream: Upstream

    @property
    def deployment(self) -> tuple[str, str]:
        """The circuit breaker's key: provider and upstream model."""
        return (self.model.provider, self.model.upstream_model)

    def observe(self, chat: types_pb2.ChatRequest, run: PlanRun, stream: bool) -> AttemptObserver:
        return AttemptObserver(self, chat, run, stream)


_INFLIGHT = metrics.gauge("weir_reasoner_inflight_upstream", "Provider calls in progress", ("model",))
_TOKENS = metrics.counter("weir_reasoner_tokens", "Tokens by model, team and direction (in: prompt, out: completion)",
                          ("model", "team", "direction"))
_ATTEMPTS = metrics.counter("weir_reasoner_attempts", "Provider calls by model and outcome", ("model", "outcome"))
_UPSTREAM_SECONDS = metrics.histogram("weir_reasoner_upstream_seconds", "Provider call duration", ("model",))


class AttemptObserver:
    """One provider call as seen by operators: a GenAI client span and the reasoner's metrics."""

    __slots__ = ("_model", "_span", "_t0", "_team", "_upstream_model")

    def __init__(self, target: Target, chat: types_pb2.ChatRequest, run: PlanRun, stream: bool) -> None:
        pr = target.upstream.provider
        s = chat.sampling
        self._model = target.model.id
        self._upstream_model = target.model.upstream_model
        self._team = run.tenant
        self._t0 = time.perf_counter()
        self._span = telemetry.ClientSpan(f"chat {target.model.upstream_model}", {
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_PROVIDER_NAME: pr.kind,
            sc.GEN_AI_REQUEST_MODEL: target.model.upstream_model,
            sc.GEN_AI_REQUEST_MAX_TOKENS: s.max_tokens if s.HasField("max_tokens") else None,
            sc.GEN_AI_REQUEST_TEMPERATURE: s.temperature if s.HasField("temperature") else None,
            sc.SERVER_ADDRESS: urlsplit(pr.base_url).hostname,
            sc.WEIR_ATTEMPT: len(run.attempts) + 1,
            sc.WEIR_STREAM: stream,
            sc.WEIR_TENANT: run.tenant or None,
        })
        _INFLIGHT.labels(self._model).inc()

    def _finish(self, outcome: str) -> None:
        _INFLIGHT.labels(self._model).dec()
        _ATTEMPTS.labels(self._model, outcome).inc()
        _UPSTREAM_SECONDS.labels(self._model).observe(time.perf_counter() - self._t0)

    def ok(self, usage: types_pb2.Usage, finish_reason: str, response_id: str) -> None:
        self._finish("ok")
        _TOKENS.labels(self._model, self._team, "in").inc(usage.prompt_tokens)
        _TOKENS.labels(self._model, self._team, "out").inc(usage.completion_tokens)
        self._span.set({sc.GEN_AI_RESPONSE_MODEL: self._upstream_model,
                        sc.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
                        sc.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
                        sc.GEN_AI_RESPONSE_FINISH_REASONS: [finish_reason] if finish_reason else None,
                        sc.GEN_AI_RESPONSE_ID: response_id or None, sc.WEIR_ATTEMPT_OUTCOME: "ok",
                        sc.HTTP_RESPONSE_STATUS_CODE: 200})
        self._span.end()

    def failed(self, f: p.UpstreamFailure) -> None:
        self._finish(f.kind)
        self._span.set({sc.WEIR_ATTEMPT_OUTCOME: f.kind, sc.HTTP_RESPONSE_STATUS_CODE: f.http_status or None})
        self._span.end(error=f.kind)

    def cancelled(self) -> None:
        self._finish("cancelled")
        self._span.end(error="cancelled")


class OutcomeReporter:
    """Reports each attempt to the router (RouterService.ReportOutcome), fire-and-forget."""

    def __init__(self, address: str, mux: bool) -> None:
        self._client = ServiceClient(address, mux)
        self._stub = self._client.stub(router_service_pb2_grpc.RouterServiceStub,
                                       router_service_pb2.DESCRIPTOR.services_by_name["RouterService"])
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, attempt: pb.Attempt, retry_after_s: float) -> None:
        req = router_service_pb2.ReportOutcomeRequest(
            target=attempt.target, success=attempt.outcome == "ok", latency_ms=attempt.latency_ms,
            http_status=attempt.http_status, retry_after_s=retry_after_s,
        )
        task = asyncio.create_task(self._send(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, req: router_service_pb2.ReportOutcomeRequest) -> None:
        try:
            await self._stub.ReportOutcome(req, timeout=2.0)
        except grpc.RpcError as exc:
            log.debug("outcome report failed", extra={"code": str(exc.code()) if hasattr(exc, "code") else ""})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._client.close()


class PlanRun:
    """One request's walk through its plan: which target to call next, attempts made, the final error."""

    def __init__(self, targets: list[Target], settings: ReasonerSettings, deadline: float | None,
                 reporter: OutcomeReporter | None, breakers: Breakers) -> None:
        self.targets = targets
        self._settings = settings
        self._deadline = deadline  # time.monotonic() by which the caller gives up; None: no deadline
        self._reporter = reporter
        self._breakers = breakers
        self._index = 0
        self._current: Target | None = None
        self._permit: Permit | None = None  # the breaker's leave for the call in progress
        self._tries = 0
        self._last: p.UpstreamFailure | None = None
        self._min_context = 0  # after a context-length error only larger windows are tried
        self._skipped: list[Target] = []  # targets passed over because their breaker is open
        self.attempts: list[pb.Attempt] = []
        self.tenant = ""  # the caller's team, for metrics and spans
        self.failures: list[tuple[Target, p.UpstreamFailure]] = []

    async def next(self) -> Target | None:
        """The target to call now (after sleeping any backoff); None once the plan is exhausted."""
        f, current = self._last, self._current
        self._last = None
        if f is not None and current is not None and self._may_retry(f):
            delay = self._delay(f)
            if delay is not None:
                permit = self._breakers.allow(current.deployment)
                if permit is None:  # this request's own failures (or others') opened the breaker
                    self._skip(current)
                else:
                    self._permit = permit
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._tries += 1
                    return current
        while self._index < len(self.targets):
            target = self.targets[self._index]
            self._index += 1
            if target.model.context_window <= self._min_context:
                continue
            permit = self._breakers.allow(target.deployment)
            if permit is None:
                self._skip(target)
                continue
            self._current, self._tries, self._permit = target, 1, permit
            return target
        return None

    def release(self) -> None:
        """Frees a breaker probe held by a call that ended without an outcome (the caller went away)."""
        if self._permit is not None:
            self._breakers.release(self._permit)
            self._permit = None

    def _may_retry(self, f: p.UpstreamFailure) -> bool:
        if not f.transient or self._tries > self._settings.max_retries:
            return False
        return f.kind != "timeout" or not any(
            t.model.context_window > self._min_context and self._breakers.remaining_s(t.deployment) == 0
            for t in self.targets[self._index:]
        )

    def _skip(self, target: Target) -> None:
        self._skipped.append(target)
        self.attempts.append(pb.Attempt(target=target.route, outcome="circuit_open"))
        log.info("target skipped: circuit breaker open", extra={
            "model": target.model.id, "retry_in_s": round(self._breakers.remaining_s(target.deployment), 3)})

    def _delay(self, f: p.UpstreamFailure) -> float | None:
        """Backoff before retrying after `f`; None when waiting makes no sense (long Retry-After, deadline)."""
        s = self._settings
        backoff = min(s.backoff_max_ms, s.backoff_base_ms * 2.0 ** (self._tries - 1)) / 1000
        delay = backoff * random.uniform(0.5, 1.0)
        wait = f.retry_after_s
        if f.kind == "rate_limited" and self._current is not None:
            # With several keys another may be free now; the limited one rests for its Retry-After.
            keys_wait = self._current.upstream.keys.wait_s(self._current.model.upstream_model)
            wait = wait if keys_wait is None else keys_wait
        if wait > 0:
            if wait > s.retry_after_cap_s:
                return None
            delay = max(delay, wait)
        if self._deadline is not None and delay >= self._deadline - time.monotonic():
            return None
        return delay

    def _attempt(self, target: Target, outcome: str, status: int, t0: float, retry_after_s: float) -> pb.Attempt:
        attempt = pb.Attempt(target=target.route, http_status=status, outcome=outcome,
                             latency_ms=(time.perf_counter() - t0) * 1000)
        self.attempts.append(attempt)
        if self._reporter is not None and outcome not in _REQUEST_FAULTS:
            self._reporter.report(attempt, retry_after_s)
        return attempt

    def succeeded(self, target: Target, t0: float) -> pb.Attempt:
        if self._permit is not None:
            self._breakers.success(self._permit)
            self._permit = None
        return self._attempt(target, "ok", 200, t0, 0.0)

    def failed(self, target: Target, f: p.UpstreamFailure, t0: float) -> pb.Attempt:
        """Records a failed call; `fatal()` says whether the request ends here."""
        self._last = f
        self.failures.append((target, f))
        if self._permit is not None:
            if f.kind in _REQUEST_FAULTS:  # the deployment answered; its health is unknown either way
                self._breakers.release(self._permit)
            else:
                self._breakers.failure(self._permit)
            self._permit = None
        if f.kind == "context_length":
            self._min_context = max(self._min_context, target.model.context_window)
        log.info("attempt failed", extra={"model": target.model.id, "outcome": f.kind, "http_status": f.http_status,
                                          "detail": f.message[:300]})
        return self._attempt(target, f.kind, f.http_status, t0, f.retry_after_s)

    def _metadata(self, target: Target, f: p.UpstreamFailure) -> dict[str, str]:
        return {
            "model": target.model.id,
            "provider": target.model.provider,
            "http_status": str(f.http_status),
            "upstream_message": f.message[:500],
            "attempts": ",".join(f"{a.target.model}:{a.outcome}:{a.http_status}" for a in self.attempts),
        }

    def fatal(self, target: Target, f: p.UpstreamFailure) -> WeirError | None:
        """The error that ends the request after `f` without trying further, if any."""
        md = self._metadata(target, f)
        if f.kind == "content_filtered":
            return WeirError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"{target.model.id} refused the request (content filter): {f.message}",
                             "CONTENT_FILTERED", md)
        if f.kind == "bad_request":
            if self._skipped or any(e.kind not in _REQUEST_FAULTS for _, e in self.failures[:-1]):
                return None  # a fallback tried because earlier targets failed: skip it, the request may be fine
            return WeirError(grpc.StatusCode.INVALID_ARGUMENT, f"{target.model.id} rejected the request: {f.message}",
                             "UPSTREAM_BAD_REQUEST", md)
        return None

    def interrupted(self, target: Target, f: p.UpstreamFailure) -> WeirError:
        return WeirError(grpc.StatusCode.ABORTED,
                         f"the answer stream from {target.model.id} broke off ({f.kind}): {f.message}",
                         "STREAM_INTERRUPTED", self._metadata(target, f))

    def final_error(self) -> WeirError:
        """The error once every target failed or was skipped."""
        if not self.failures:
            wait = min(self._breakers.remaining_s(t.deployment) for t in self._skipped)
            models = ", ".join(t.model.id for t in self._skipped)
            return WeirError(grpc.StatusCode.UNAVAILABLE,
                             f"every target's circuit breaker is open after repeated failures ({models})",
                             "CIRCUIT_OPEN", {"models": models,
                                              "attempts": ",".join(f"{t.model.id}:circuit_open:0"
                                                                   for t in self._skipped)},
                             retry_after_s=max(0.1, wait))
        target, last = self.failures[-1]
        md = self._metadata(target, last)
        kinds = {f.kind for _, f in self.failures}
        n = len(self.attempts)
        if kinds == {"rate_limited"}:
            waits = [f.retry_after_s for _, f in self.failures if f.retry_after_s > 0]
            return WeirError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"every target is rate limited ({n} attempts); last: {target.model.id}: {last.message}",
                             "RATE_LIMITED", md, retry_after_s=min(waits) if waits else 1.0)
        if last.kind == "context_length":
            return WeirError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the prompt exceeds the context window of every target: {last.message}",
                             "CONTEXT_LENGTH_EXCEEDED", md)
        if kinds <= p.TARGET_FAULTS:
            reason = "UPSTREAM_AUTH_FAILED" if "auth_failed" in kinds else "UPSTREAM_MODEL_NOT_FOUND"
            return WeirError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"no target accepted the call; last: {target.model.id}: {last.message}", reason, md)
        return WeirError(grpc.StatusCode.UNAVAILABLE,
                         f"all {n} attempts failed; last: {target.model.id}: {last.kind}: {last.message}",
                         "UPSTREAM_UNAVAILABLE", md)


def _validate(req: types_pb2.ChatRequest) -> None:
    """Fails fast on what no provider could take (JSON fields are parsed here once, not mid-plan)."""
    if bad := violations(req):
        raise invalid_argument("invalid chat request", *bad)


def _deltas(pieces: list[p.Piece]) -> list[pb.Delta]:
    """Pieces from one network read as few Delta events as possible, in order (tool calls stay separate)."""
    out: list[pb.Delta] = []
    content = reasoning = ""
    for piece in pieces:
        if piece.tool_calls is not None or (content and piece.reasoning):
            if content or reasoning:
                out.append(pb.Delta(content=content, reasoning=reasoning))
                content = reasoning = ""
            if piece.tool_calls is not None:
                out.append(pb.Delta(tool_calls_json=orjson.dumps(piece.tool_calls).decode()))
                continue
        content += piece.content
        reasoning += piece.reasoning
    if content or reasoning:
        out.append(pb.Delta(content=content, reasoning=reasoning))
    return out


class ReasonerService(pb_grpc.ReasonerServiceServicer):
    """Complete / StreamComplete over the configured providers."""

    service_names: tuple[str, ...] = (pb.DESCRIPTOR.services_by_name["ReasonerService"].full_name,)

    def __init__(self, settings: ReasonerSettings, config: MeshConfig) -> None:
        self.settings = settings
        self.config = config
        self.upstreams = {
            name: Upstream(provider, settings.anthropic_max_tokens) for name, provider in config.providers.items()
        }
        self._reporter: OutcomeReporter | None = None
        self.breakers = Breakers(settings.breaker_policy)
        self._unary: UnaryFlights[pb.CompleteResponse] = UnaryFlights(_shared_response)
        self._streams: StreamFlights[pb.StreamCompleteResponse] = StreamFlights(_is_done, _shared_done)

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()
        if self.settings.router_addr:
            self._reporter = OutcomeReporter(self.settings.router_addr, self.settings.clients.mux)
        log.info("providers", extra={"providers": {
            name: {"kind": u.provider.kind, "url": u.url, "keys": len(u.keys)} for name, u in self.upstreams.items()
        }, "config": self.config.source})

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ReasonerServiceServicer_to_server(self, server)

    async def close(self) -> None:
        if self._reporter is not None:
            await self._reporter.close()
        for upstream in self.upstreams.values():
            await upstream.close()

    def _plan(self, chat: types_pb2.ChatRequest, plan: list[types_pb2.RouteTarget],
              context: grpc.aio.ServicerContext) -> PlanRun:
        _validate(chat)
        if not plan:
            raise invalid_argument("the plan is empty", ("plan", "at least one target is required"))
        targets: list[Target] = []
        bad: list[tuple[str, str]] = []
        for i, rt in enumerate(plan):
            model = self.config.models.get(rt.model)
            if model is None:
                bad.append((f"plan[{i}].model", f"unknown model {rt.model!r} (known: {sorted(self.config.models)})"))
                continue
            if rt.provider and rt.provider != model.provider:
                bad.append((f"plan[{i}].provider", f"model {model.id!r} is served by {model.provider!r}"))
                continue
            route = types_pb2.RouteTarget(model=model.id, provider=model.provider)
            targets.append(Target(route, model, self.upstreams[model.provider]))
        if bad:
            raise invalid_argument("invalid plan", *bad)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return PlanRun(targets, self.settings, deadline, self._reporter, self.breakers)

    def _usage(self, usage: types_pb2.Usage | None, chat: types_pb2.ChatRequest, chars: int,
               target: Target) -> types_pb2.Usage:
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            return usage
        prompt = p.estimate_prompt_tokens(chat)
        completion = (chars + 3) // 4
        log.info("usage estimated: the provider reported none", extra={"model": target.model.id})
        return types_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        chat = request.request
        run = self._plan(chat, list(request.plan), context)
        run.tenant = request.tenant
        key = _flight_key(request.tenant, request.coalesce_key, run)
        if key is None:
            return await self._complete(chat, run)
        return await self._unary.run(key, lambda: self._complete(chat, run))

    async def _complete(self, chat: types_pb2.ChatRequest, run: PlanRun) -> pb.CompleteResponse:
        try:
            while (target := await run.next()) is not None:
                t0 = time.perf_counter()
                obs = target.observe(chat, run, stream=False)
                try:
                    c = await target.upstream.complete(chat, target.model)
                except p.UpstreamFailure as f:
                    obs.failed(f)
                    run.failed(target, f, t0)
                    err = run.fatal(target, f)
                    if err is not None:
                        raise err from None
                    continue
                except BaseException:
                    obs.cancelled()
                    raise
                run.succeeded(target, t0)
                chars = len(c.content) + len(c.reasoning) + (len(orjson.dumps(c.tool_calls)) if c.tool_calls else 0)
                usage = self._usage(c.usage, chat, chars, target)
                obs.ok(usage, c.finish_reason, c.response_id)
                return pb.CompleteResponse(
                    content=c.content, model=target.model.id, provider=target.model.provider,
                    usage=usage, finish_reason=c.finish_reason,
                    attempts=run.attempts, reasoning_content=c.reasoning,
                    tool_calls_json=orjson.dumps(c.tool_calls).decode() if c.tool_calls else "",
                    provider_response_id=c.response_id,
                )
            raise run.final_error()
        finally:
            run.release()

    async def StreamComplete(self, request: pb.StreamCompleteRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamCompleteResponse]:
        chat = request.request
        run = self._plan(chat, list(request.plan), context)
        run.tenant = request.tenant
        key = _flight_key(request.tenant, request.coalesce_key, run)
        events = self._stream(chat, run) if key is None else self._streams.follow(key, lambda: self._stream(chat, run))
        async with aclosing(events):
            async for event in events:
                yield event

    async def _stream(self, chat: types_pb2.ChatRequest,
                      run: PlanRun) -> AsyncGenerator[pb.StreamCompleteResponse, None]:
        told = 0  # attempts already sent as events

        def untold() -> list[pb.StreamCompleteResponse]:
            nonlocal told
            out = [pb.StreamCompleteResponse(attempt=a) for a in run.attempts[told:]]
            told = len(run.attempts)
            return out

        try:
            while (target := await run.next()) is not None:
                for event in untold():  # targets skipped by their circuit breaker
                    yield event
                t0 = time.perf_counter()
                state = p.StreamState()
                sent = False
                obs = target.observe(chat, run, stream=True)
                started = pb.StreamCompleteResponse(
                    started=pb.Started(model=target.model.id, provider=target.model.provider))
                try:
                    async with aclosing(target.upstream.stream(chat, target.model, state)) as upstream:
                        async for pieces in upstream:
                            for delta in _deltas(pieces):
                                if not sent:  # committed to this target from here on: no fallback
                                    sent = True
                                    yield started
                                yield pb.StreamCompleteResponse(delta=delta)
                except p.UpstreamFailure as f:
                    obs.failed(f)
                    run.failed(target, f, t0)
                    for event in untold():
                        yield event
                    if sent:
                        raise run.interrupted(target, f) from None
                    err = run.fatal(target, f)
                    if err is not None:
                        raise err from None
                    continue
                except BaseException:
                    obs.cancelled()
                    raise
                run.succeeded(target, t0)
                if not sent:  # an empty answer
                    yield started
                usage = self._usage(state.usage, chat, state.chars, target)
                obs.ok(usage, state.finish_reason, state.response_id)
                done = pb.Done(model=target.model.id, provider=target.model.provider, usage=usage,
                               finish_reason=state.finish_reason)
                yield pb.StreamCompleteResponse(done=done)
                return
            for event in untold():
                yield event
            raise run.final_error()
        finally:
            run.release()


def _flight_key(tenant: str, coalesce_key: str, run: PlanRun) -> Hashable | None:
    """Calls coalesce only with the same key, tenant and plan (a caller never gets a model it was not routed to)."""
    if not coalesce_key:
        return None
    return (tenant, coalesce_key, tuple(t.model.id for t in run.targets))


def _shared_response(resp: pb.CompleteResponse) -> pb.CompleteResponse:
    out = pb.CompleteResponse()
    out.CopyFrom(resp)
    out.coalesced = True
    return out


def _is_done(event: pb.StreamCompleteResponse) -> bool:
    return event.WhichOneof("event") == "done"


def _shared_done(event: pb.StreamCompleteResponse) -> pb.StreamCompleteResponse:
    out = pb.StreamCompleteResponse()
    out.CopyFrom(event)
    out.done.coalesced = True
    return out
