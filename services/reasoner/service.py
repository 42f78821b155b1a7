"""The reasoner: runs a chat request along the router's plan, with retries, fallbacks and streaming.

Per target, transient failures (429, 5xx, connection errors, timeouts, broken streams that sent nothing yet)
are retried with exponential backoff and jitter, honouring Retry-After up to a cap; then the next target is
tried. A context-length error skips to a later target with a larger window; content-filter refusals and
other 400s end the request at once.

A stream is: failed `attempt`s, then `started` (the answering target, sent with its first delta), `delta`s, and
`done`. Once `started` went out the target is fixed: if its stream breaks (cut, stalled, malformed, no end
marker) the call ends with ABORTED / STREAM_INTERRUPTED instead of `done`; before that, breaks are retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import grpc
import orjson

from services.reasoner import providers as p
from services.reasoner.settings import ReasonerSettings
from services.reasoner.upstream import Upstream
from weir.common.v1 import types_pb2
from weir.kit.clients import open_channel
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


class OutcomeReporter:
    """Reports each attempt to the router (RouterService.ReportOutcome), fire-and-forget."""

    def __init__(self, address: str) -> None:
        self._channel = open_channel(address)
        self._stub = router_service_pb2_grpc.RouterServiceStub(self._channel)
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
        await self._channel.close()


class PlanRun:
    """One request's walk through its plan: which target to call next, attempts made, the final error."""

    def __init__(self, targets: list[Target], settings: ReasonerSettings, context: grpc.aio.ServicerContext,
                 reporter: OutcomeReporter | None) -> None:
        self._targets = targets
        self._settings = settings
        self._context = context
        self._reporter = reporter
        self._index = 0
        self._current: Target | None = None
        self._tries = 0
        self._last: p.UpstreamFailure | None = None
        self._min_context = 0  # after a context-length error only larger windows are tried
        self.attempts: list[pb.Attempt] = []
        self.failures: list[tuple[Target, p.UpstreamFailure]] = []

    async def next(self) -> Target | None:
        """The target to call now (after sleeping any backoff); None once the plan is exhausted."""
        f, current = self._last, self._current
        self._last = None
        if f is not None and current is not None and f.transient and self._tries <= self._settings.max_retries:
            delay = self._delay(f)
            if delay is not None:
                if delay > 0:
                    await asyncio.sleep(delay)
                self._tries += 1
                return current
        while self._index < len(self._targets):
            target = self._targets[self._index]
            self._index += 1
            if target.model.context_window <= self._min_context:
                continue
            self._current, self._tries = target, 1
            return target
        return None

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
        remaining: float | None = self._context.time_remaining()
        if remaining is not None and delay >= remaining:
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
        return self._attempt(target, "ok", 200, t0, 0.0)

    def failed(self, target: Target, f: p.UpstreamFailure, t0: float) -> pb.Attempt:
        """Records a failed call; `fatal()` says whether the request ends here."""
        self._last = f
        self.failures.append((target, f))
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
            return WeirError(grpc.StatusCode.INVALID_ARGUMENT, f"{target.model.id} rejected the request: {f.message}",
                             "UPSTREAM_BAD_REQUEST", md)
        return None

    def interrupted(self, target: Target, f: p.UpstreamFailure) -> WeirError:
        return WeirError(grpc.StatusCode.ABORTED,
                         f"the answer stream from {target.model.id} broke off ({f.kind}): {f.message}",
                         "STREAM_INTERRUPTED", self._metadata(target, f))

    def final_error(self) -> WeirError:
        """The error once every target failed."""
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


def _validate(chat: types_pb2.ChatRequest) -> None:
    """Fails fast on what no provider could take (JSON fields are parsed here once, not mid-plan)."""
    bad: list[tuple[str, str]] = []
    if not chat.messages:
        bad.append(("request.messages", "at least one message is required"))
    fields = [("request.tools_json", chat.tools_json), ("request.tool_choice_json", chat.tool_choice_json),
              ("request.response_format_json", chat.response_format_json), ("request.extra_json", chat.extra_json)]
    for i, m in enumerate(chat.messages):
        fields += [(f"request.messages[{i}].content_parts_json", m.content_parts_json),
                   (f"request.messages[{i}].tool_calls_json", m.tool_calls_json)]
    for name, raw in fields:
        if not raw:
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            bad.append((name, f"not valid JSON: {exc}"))
            continue
        if name == "request.extra_json" and not isinstance(value, dict):
            bad.append((name, "must be a JSON object"))
        if name.endswith(("tools_json", "content_parts_json", "tool_calls_json")) and not isinstance(value, list):
            bad.append((name, "must be a JSON array"))
    if bad:
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

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()
        if self.settings.router_addr:
            self._reporter = OutcomeReporter(self.settings.router_addr)
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
        return PlanRun(targets, self.settings, context, self._reporter)

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
        while (target := await run.next()) is not None:
            t0 = time.perf_counter()
            try:
                c = await target.upstream.complete(chat, target.model)
            except p.UpstreamFailure as f:
                run.failed(target, f, t0)
                err = run.fatal(target, f)
                if err is not None:
                    raise err from None
                continue
            run.succeeded(target, t0)
            chars = len(c.content) + len(c.reasoning) + (len(orjson.dumps(c.tool_calls)) if c.tool_calls else 0)
            return pb.CompleteResponse(
                content=c.content, model=target.model.id, provider=target.model.provider,
                usage=self._usage(c.usage, chat, chars, target), finish_reason=c.finish_reason,
                attempts=run.attempts, reasoning_content=c.reasoning,
                tool_calls_json=orjson.dumps(c.tool_calls).decode() if c.tool_calls else "",
                provider_response_id=c.response_id,
            )
        raise run.final_error()

    async def StreamComplete(self, request: pb.StreamCompleteRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamCompleteResponse]:
        chat = request.request
        run = self._plan(chat, list(request.plan), context)
        while (target := await run.next()) is not None:
            t0 = time.perf_counter()
            state = p.StreamState()
            sent = False
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
                attempt = run.failed(target, f, t0)
                yield pb.StreamCompleteResponse(attempt=attempt)
                if sent:
                    raise run.interrupted(target, f) from None
                err = run.fatal(target, f)
                if err is not None:
                    raise err from None
                continue
            run.succeeded(target, t0)
            if not sent:  # an empty answer
                yield started
            done = pb.Done(model=target.model.id, provider=target.model.provider,
                           usage=self._usage(state.usage, chat, state.chars, target),
                           finish_reason=state.finish_reason)
            yield pb.StreamCompleteResponse(done=done)
            return
        raise run.final_error()
