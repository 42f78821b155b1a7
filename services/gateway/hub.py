"""The orchestrator: one request through cache, embedder, router and reasoner, hops overlapped.

For one request the hub obtains ONE embedding and hands it to both the semantic cache and the router:

    exact lookup  ─┐ (concurrently)            semantic lookup ─┐ (concurrently, same embedding)
    embed         ─┘ -> exact hit? answer.  ->  route           ─┘ -> semantic hit? answer. -> reasoner

A stream that races (`x-weir-stream-race: on`) opens the reasoner call as soon as it is routed, beside the
embedding and the semantic lookup; whichever answers first wins: a semantic hit cancels the call (and is charged
its prompt), a miss relays it, and a model whose first token comes before the lookup has ended answers at once
(the lookup is given up).

Both the REST bridge and the gRPC GatewayService call `admit()` (the policy: key, limits, budgets) and then
`complete()` / `stream()`, which settle the admission (real usage, ledger, metrics) however the request ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from services.gateway.auth import Principal
from services.gateway.exact_reader import ExactReader
from services.gateway.openai_wire import ApiError, api_error_from_remote
from services.gateway.policy import Admission, Policy, Settlement
from services.gateway.settings import GatewaySettings
from services.gateway.timings import Timings
from services.gateway.tokens import TokenCounter
from weir import chat
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.cache.v1 import cache_service_pb2_grpc as cache_grpc
from weir.common.v1 import types_pb2
from weir.embedder.v1 import embedder_service_pb2 as embedder_pb
from weir.embedder.v1 import embedder_service_pb2_grpc as embedder_grpc
from weir.gateway.v1 import gateway_service_pb2 as gateway_pb
from weir.kit import semconv as sc
from weir.kit import telemetry
from weir.kit.clients import ServiceClient
from weir.kit.errors import parse_rpc_error
from weir.reasoner.v1 import reasoner_service_pb2 as reasoner_pb
from weir.reasoner.v1 import reasoner_service_pb2_grpc as reasoner_grpc
from weir.router.v1 import router_service_pb2 as router_pb
from weir.router.v1 import router_service_pb2_grpc as router_grpc

log = logging.getLogger("weir.gateway.hub")
T = TypeVar("T")

MISS, EXACT, SEMANTIC = "miss", "exact", "semantic"
_TIER = {MISS: types_pb2.CACHE_TIER_MISS, EXACT: types_pb2.CACHE_TIER_EXACT, SEMANTIC: types_pb2.CACHE_TIER_SEMANTIC}
STORABLE_FINISH = ("stop", "length")
NO_CONTEXT = "miss: nothing stored in this conversation context"
RACE_WON = "miss: the raced model call answered before the lookup ended"
_BIG_PROMPT_CHARS = 32_768  # counted in a worker thread above this


@dataclass
class Decision:
    """What the lookup phase found: a cached answer, or a routing plan for the reasoner."""

    id: str
    created: int
    tenant: str
    cache: str
    cache_reason: str
    timings: Timings
    store: bool
    answer: cache_pb.CachedAnswer | None = None
    plan: list[types_pb2.RouteTarget] = field(default_factory=list)
    route_reason: str = ""
    embedding: types_pb2.Embedding | None = None
    #: Where no decision needed the embedding (only the store will): the one already being computed, or the text
    #: the store embeds once the answer is complete. The answer waits for neither.
    pending_embedding: asyncio.Future[tuple[types_pb2.Embedding | None, str]] | None = None
    embed_text: str = ""
    preview: cache_pb.CachedAnswer | None = None  # a near neighbour that failed verification (when asked for)
    #: A stream racing its model call against the semantic lookup: the call being opened, and the model it was
    #: sent to once it was sent (a semantic hit then cancels it and is charged that call's prompt).
    race: asyncio.Task[_Opened] | None = None
    raced: str = ""
    race_attempts: list[reasoner_pb.Attempt] = field(default_factory=list)  # the raced call's failed attempts

    def drop_embedding(self) -> None:
        """Nothing will be stored: stop computing an embedding nobody waits for."""
        if self.pending_embedding is not None:
            self.pending_embedding.cancel()
            self.pending_embedding = None

    @property
    def tier(self) -> types_pb2.CacheTier.ValueType:
        return _TIER[self.cache]


@dataclass
class _Opened:
    """A reasoner stream whose answering target has started: the call, its iterator, the started event."""

    call: Any
    it: AsyncIterator[reasoner_pb.StreamCompleteResponse]
    started: reasoner_pb.Started


@dataclass
class Outcome:
    """A whole answer."""

    decision: Decision
    content: str
    model: str
    usage: types_pb2.Usage
    finish_reason: str
    tool_calls_json: str = ""


@dataclass
class StreamEvent:
    """One event of a streamed answer: a delta, or the end of a complete answer."""

    content: str = ""
    reasoning: str = ""
    tool_calls_json: str = ""
    end: reasoner_pb.Done | None = None
    attempt: reasoner_pb.Attempt | None = None  # a provider attempt that finished (no text)


@dataclass
class StreamSession:
    """A stream whose answering model is known; iterate `events` for the deltas, then always `aclose()`.
    `attempts` are the provider attempts that failed before the answering target started."""

    decision: Decision
    model: str
    events: AsyncGenerator[StreamEvent, None]
    abandon: Callable[[], None]
    attempts: list[reasoner_pb.Attempt] = field(default_factory=list)

    async def aclose(self) -> None:
        """Ends the stream (cancelling the upstream call) and settles it if iterating never did."""
        await self.events.aclose()
        self.abandon()


def _degraded(code: grpc.StatusCode) -> str:
    return f"degraded: cache unavailable ({code.name.lower()})"


class Hub:
    def __init__(self, settings: GatewaySettings, policy: Policy, counter: TokenCounter,
                 exact: ExactReader | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.counter = counter
        self.exact_reader = exact  # reads the exact tier from Redis directly (else LookupExact over gRPC)
        self.deadlines = settings.deadlines
        mux = settings.clients.mux
        self._clients = {
            name: ServiceClient(addr, mux)
            for name, addr in (("embedder", settings.embedder_addr), ("cache", settings.cache_addr),
                               ("router", settings.router_addr), ("reasoner", settings.reasoner_addr))
        }
        self.embedder = self._clients["embedder"].stub(
            embedder_grpc.EmbedderServiceStub, embedder_pb.DESCRIPTOR.services_by_name["EmbedderService"])
        self.cache = self._clients["cache"].stub(
            cache_grpc.CacheServiceStub, cache_pb.DESCRIPTOR.services_by_name["CacheService"])
        self.router = self._clients["router"].stub(
            router_grpc.RouterServiceStub, router_pb.DESCRIPTOR.services_by_name["RouterService"])
        self.reasoner = self._clients["reasoner"].stub(
            reasoner_grpc.ReasonerServiceStub, reasoner_pb.DESCRIPTOR.services_by_name["ReasonerService"])
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def channels(self) -> dict[str, grpc.aio.Channel]:
        return {name: client.channel for name, client in self._clients.items()}

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        for client in self._clients.values():
            await client.close()

    # ---- hops ---------------------------------------------------------------------------------

    async def _timed(self, timings: Timings, hop: str, call: Awaitable[T]) -> T:
        since = time.perf_counter()
        try:
            return await call
        finally:
            timings.add(hop, since)

    async def _embed(self, text: str, timings: Timings) -> tuple[types_pb2.Embedding | None, str]:
        try:
            resp = await self._timed(timings, "embed", self.embedder.Embed(
                embedder_pb.EmbedRequest(text=chat.embedding_text(text)), timeout=self.deadlines.embed_s))
            return resp.embedding, ""
        except grpc.RpcError as exc:
            err = parse_rpc_error(exc)
            log.warning("embedder failed; semantic cache and learned routing skipped",
                        extra={"code": err.code.name, "error": err.message})
            return None, f"degraded: embedder unavailable ({err.code.name.lower()})"

    async def _exact(self, tenant: str, req: types_pb2.ChatRequest, timings: Timings,
                     adm: Admission | None = None) -> cache_pb.LookupExactResponse:
        if self.exact_reader is not None:
            since = time.perf_counter()
            span = telemetry.ClientSpan("cache exact lookup", kind="internal")
            prefetch = adm.take_prefetch(tenant) if adm is not None else None
            if prefetch is not None:
                found = self.exact_reader.counted(tenant, await prefetch)
            else:
                found = await self.exact_reader.lookup(tenant, req)
            span.set({sc.WEIR_CACHE_TIER: EXACT if found.answer is not None else MISS,
                      sc.WEIR_CACHE_REASON: found.reason})
            span.end()
            timings.add("cache", since)
            if found.answer is None and not found.context_has_entries:
                return cache_pb.LookupExactResponse(hit=False, reason=NO_CONTEXT)
            return cache_pb.LookupExactResponse(hit=found.answer is not None, answer=found.answer, reason=found.reason)
        try:
            return await self._timed(timings, "cache", self.cache.LookupExact(
                cache_pb.LookupExactRequest(tenant=tenant, request=req), timeout=self.deadlines.cache_s))
        except grpc.RpcError as exc:
            err = parse_rpc_error(exc)
            log.warning("cache lookup failed; answering from the model", extra={"code": err.code.name})
            return cache_pb.LookupExactResponse(hit=False, reason=_degraded(err.code))

    async def _semantic(self, tenant: str, req: types_pb2.ChatRequest, emb: types_pb2.Embedding,
                        timings: Timings, preview: bool = False) -> cache_pb.LookupSemanticResponse:
        try:
            return await self._timed(timings, "cache", self.cache.LookupSemantic(
                cache_pb.LookupSemanticRequest(tenant=tenant, request=req, embedding=emb, include_preview=preview),
                timeout=self.deadlines.cache_s))
        except grpc.RpcError as exc:
            err = parse_rpc_error(exc)
            log.warning("semantic lookup failed", extra={"code": err.code.name})
            return cache_pb.LookupSemanticResponse(hit=False, reason=_degraded(err.code))

    async def _route(self, principal: Principal, req: types_pb2.ChatRequest, emb: types_pb2.Embedding | None,
                     prompt_tokens: int, timings: Timings) -> router_pb.RouteResponse:
        rr = router_pb.RouteRequest(
            requested_model=req.model, prompt_tokens=prompt_tokens,
            max_tokens=req.sampling.max_tokens if req.sampling.HasField("max_tokens") else 0,
            allowed_models=principal.allowed_models, tenant=principal.team)
        if emb is not None:
            rr.embedding.CopyFrom(emb)
        try:
            return await self._timed(timings, "route", self.router.Route(rr, timeout=self.deadlines.route_s))
        except grpc.RpcError as exc:
            raise api_error_from_remote(parse_rpc_error(exc), "router") from exc

    def _store(self, d: Decision, req: types_pb2.ChatRequest, content: str, model: str,
               usage: types_pb2.Usage, finish_reason: str, ttl_s: int) -> None:
        """Stores a complete answer in the background (never delays the response)."""
        if not d.store or finish_reason not in STORABLE_FINISH or not content:
            d.drop_embedding()
            return
        answer = cache_pb.CachedAnswer(content=content, model=model, usage=usage, finish_reason=finish_reason,
                                       created_unix=d.created, question=chat.semantic_text(req))
        sr = cache_pb.StoreRequest(tenant=d.tenant, request=req, answer=answer, ttl_seconds=ttl_s)
        pending, d.pending_embedding = d.pending_embedding, None
        text = d.embed_text if self.settings.semantic_cache else ""

        async def run() -> None:
            emb = d.embedding
            # _embed never raises: a failed embedding stores the exact tier only.
            if emb is None and pending is not None:
                emb, _ = await pending
            elif emb is None and text.strip():
                emb, _ = await self._embed(text, d.timings)
            if emb is not None and self.settings.semantic_cache:
                sr.embedding.CopyFrom(emb)
            try:
                await self.cache.Store(sr, timeout=self.deadlines.store_s)
            except grpc.RpcError as exc:
                log.warning("cache store failed", extra={"code": parse_rpc_error(exc).code.name})

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- admission -------------------------------------------------------------------------------

    async def admit(self, raw_key: str, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl, *,
                    digest: str = "") -> Admission:
        """Authenticates the key (or the key whose SHA-256 is `digest`, for background jobs) and applies its
        limits and budgets (one Redis round trip); raises ApiError."""
        timings = Timings()
        if TokenCounter.prompt_chars(req) > _BIG_PROMPT_CHARS:
            prompt_tokens = await asyncio.to_thread(self.counter.prompt, req)
        else:
            prompt_tokens = self.counter.prompt(req)
        cacheable = (chat.is_deterministic(req) or control.allow_nondeterministic) and not control.no_cache
        # The exact lookup does not wait for the admission: it starts now for the team the key had last time
        # and is used only if the admission names the same team (every answer is still behind the admission).
        prefetch: tuple[str, asyncio.Task[Any]] | None = None
        team = self.policy.known_team(raw_key, digest) if cacheable and self.exact_reader is not None else ""
        if team and self.exact_reader is not None:
            prefetch = (team, asyncio.ensure_future(self.exact_reader.lookup(team, req, count=False)))
        try:
            adm = await self.policy.admit(raw_key, req.model, prompt_tokens,
                                          self.policy.completion_reservation(req), cacheable, timings, digest=digest)
        except BaseException:
            if prefetch is not None:
                prefetch[1].cancel()
            raise
        adm.prefetch = prefetch
        return adm

    def _settle_hit(self, adm: Admission, d: Decision) -> None:
        """A cached answer costs nothing, unless a raced model call was already sent: its prompt is billed."""
        a = d.answer
        assert a is not None
        model, usage = (d.raced, types_pb2.Usage(prompt_tokens=adm.prompt_tokens)) if d.raced else (
            a.model, types_pb2.Usage())
        self.policy.settle(adm, Settlement("ok", model, d.cache, usage, saved_model=a.model, saved_usage=a.usage,
                                           request_id=d.id), d.timings)

    def _settle_failure(self, adm: Admission, d: Decision | None, err: BaseException, upstream: bool) -> None:
        """A request that ended without an answer: a refused cache-only request leaves the windows, an error
        releases its tokens, a cancelled upstream call is charged its prompt (the provider bills it)."""
        if adm.refusal is not None and err is adm.refusal:
            s = Settlement("refused", "", MISS, release=True)
        elif isinstance(err, ApiError):
            s = Settlement("error", "", MISS)
        elif upstream and d is not None and d.plan:
            s = Settlement("cancelled", d.plan[0].model, MISS, types_pb2.Usage(prompt_tokens=adm.prompt_tokens))
        else:
            s = Settlement("cancelled", "", MISS)
        s.request_id = adm.request_id
        self.policy.settle(adm, s, adm.timings)
        if d is not None:
            d.drop_embedding()

    # ---- lookup phase ---------------------------------------------------------------------------

    async def decide(self, adm: Admission, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl,
                     race: bool = False) -> Decision:
        """Looks the request up and plans its model call. `race` (streams): once the exact tier missed and a
        semantic search will run, the model call is opened as soon as it is routed (`Decision.race`)."""
        cacheable = chat.is_deterministic(req) or control.allow_nondeterministic
        d = Decision(id=adm.request_id, created=int(time.time()), tenant=adm.principal.team, cache=MISS,
                     cache_reason="", timings=adm.timings, store=cacheable and not control.no_store)
        try:
            return await self._decide(adm, req, control, race, d, cacheable)
        except BaseException:
            self.drop_race(d)  # the request failed or the client left: no raced call outlives it
            raise

    async def _decide(self, adm: Admission, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl,
                      race: bool, d: Decision, cacheable: bool) -> Decision:
        principal, timings = adm.principal, adm.timings
        lookup = cacheable and not control.no_cache
        if not cacheable:
            d.cache_reason = "bypass: not deterministic (temperature is not 0)"
        elif control.no_cache:
            d.cache_reason = "bypass: no-cache requested"
        if adm.refusal is not None:
            # Over its token window or budget: only an exact cache hit (which costs nothing) may answer.
            if lookup:
                exact = await self._exact(principal.team, req, timings, adm)
                if exact.hit:
                    d.cache, d.cache_reason, d.answer = EXACT, exact.reason or "hit", exact.answer
                    return d
            raise adm.refusal
        # The embedding serves the semantic tier (lookup or store) and the router's choice for a virtual model;
        # a request that needs neither (not cacheable, a concrete model) skips it.
        virtual = req.model in self.policy.pricing.virtual
        wanted = ((lookup or d.store) and self.settings.semantic_cache) or virtual
        text = chat.semantic_text(req) if wanted else ""
        # Over gRPC the exact lookup overlaps the embedding; read straight from Redis it is shorter than an
        # embedding hop, so the embedding waits for a miss (an exact hit then costs the embedder nothing).
        overlap = text.strip() and not (lookup and self.exact_reader is not None)
        embed_task = asyncio.ensure_future(self._embed(text, timings)) if overlap else None
        if lookup:
            exact = await self._exact(principal.team, req, timings, adm)
            if exact.hit:
                if embed_task is not None:
                    embed_task.cancel()
                d.cache, d.cache_reason, d.answer = EXACT, exact.reason or "hit", exact.answer
                return d
            d.cache_reason = exact.reason
        # A concrete model is routed without the embedding. Where no semantic search will run either (nothing is
        # stored in this conversation context, or no lookup was asked for), only the store needs the embedding:
        # it is computed once the answer is complete, in the background store, off the request's path (and not
        # at all when nothing is stored).
        search = lookup and self.settings.semantic_cache and d.cache_reason != NO_CONTEXT
        route_task = None if virtual else asyncio.ensure_future(
            self._route(principal, req, None, adm.prompt_tokens, timings))
        plan_task: asyncio.Task[tuple[list[types_pb2.RouteTarget], str]] | None = None
        if race and search and route_task is not None:
            plan_task = asyncio.ensure_future(self._plan(adm, req, route_task))
            d.race = asyncio.ensure_future(self._race(adm, d, req, plan_task))
        emb, embed_reason = None, ""
        if not (virtual or search):
            d.pending_embedding, d.embed_text = embed_task, text if embed_task is None else ""
        else:
            if embed_task is None and text.strip():
                embed_task = asyncio.ensure_future(self._embed(text, timings))
            if embed_task is not None:
                got = await self._first(d, asyncio.shield(embed_task) if d.race else embed_task)
                if got is None:  # the raced model call answered first: only the store will want the embedding
                    return await self._model_first(d, embed_task, None, plan_task)
                emb, embed_reason = got
        d.embedding = emb
        if route_task is None:
            route_task = asyncio.ensure_future(self._route(principal, req, emb, adm.prompt_tokens, timings))
        if race and search and emb is not None and plan_task is None:
            # A virtual model is routed by the embedding: its race starts here, beside the semantic search.
            plan_task = asyncio.ensure_future(self._plan(adm, req, route_task))
            d.race = asyncio.ensure_future(self._race(adm, d, req, plan_task))
        if search:
            if emb is None:
                d.cache_reason = embed_reason or "miss: nothing to embed"
            else:
                sem = await self._first(d, self._semantic(principal.team, req, emb, timings, control.preview))
                if sem is None:
                    return await self._model_first(d, None, emb, plan_task)
                if sem.hit:
                    self.drop_race(d)
                    if plan_task is not None:
                        plan_task.cancel()
                    route_task.cancel()
                    d.cache, d.cache_reason, d.answer = SEMANTIC, sem.reason or "hit", sem.answer
                    return d
                d.cache_reason = sem.reason
                if sem.HasField("preview"):
                    d.preview = sem.preview
        try:
            # Without a race the deployment is picked (its window reserved) only once the cache missed.
            d.plan, d.route_reason = await (plan_task or self._plan(adm, req, route_task))
        except BaseException:
            d.drop_embedding()
            raise
        return d

    async def _first(self, d: Decision, lookup: Awaitable[T]) -> T | None:
        """Awaits a lookup step; a stream that races returns None instead if its model call answers first (its
        first token is in: the client gets that at once, and the lookup is given up). A raced call that failed
        leaves the lookup to finish: a hit can still answer."""
        race = d.race
        if race is None:
            return await lookup
        step = asyncio.ensure_future(lookup)
        try:
            await asyncio.wait((step, race), return_when=asyncio.FIRST_COMPLETED)
            if not step.done() and not race.cancelled() and race.exception() is None:
                step.cancel()
                return None
            return await step
        except BaseException:
            step.cancel()
            raise

    async def _model_first(self, d: Decision, embed_task: asyncio.Future[tuple[types_pb2.Embedding | None, str]]
                           | None, emb: types_pb2.Embedding | None,
                           plan_task: asyncio.Future[tuple[list[types_pb2.RouteTarget], str]] | None) -> Decision:
        """The raced model call answered before the lookup ended: the request is answered by the model (a miss),
        and the store gets the embedding (the one computed, or the one still being computed)."""
        assert plan_task is not None and d.race is not None
        d.cache_reason = RACE_WON
        d.embedding = emb
        if embed_task is not None:
            d.pending_embedding, d.embed_text = embed_task, ""
        d.plan, d.route_reason = await plan_task
        return d

    async def _plan(self, adm: Admission, req: types_pb2.ChatRequest,
                    route_task: asyncio.Future[router_pb.RouteResponse]) -> tuple[list[types_pb2.RouteTarget], str]:
        """The router's plan, ordered by the deployments' own limits; raises ApiError when it is empty."""
        route = await route_task
        if not route.plan:
            raise ApiError(503, f"no model available for {req.model!r}: {route.reason}", type="service_unavailable")
        return await self.policy.pick_deployment(adm, list(route.plan)), route.reason

    async def _race(self, adm: Admission, d: Decision, req: types_pb2.ChatRequest,
                    plan_task: asyncio.Future[tuple[list[types_pb2.RouteTarget], str]]) -> _Opened:
        plan, _ = await asyncio.shield(plan_task)  # the lookup path awaits the same plan
        return await self._open(adm, d, req, plan, d.race_attempts, raced=True)

    def drop_race(self, d: Decision) -> None:
        """The raced model call is not wanted (a semantic hit, or the request failed): cancel it wherever it is."""
        race, d.race = d.race, None
        if race is None:
            return
        if race.done() and not race.cancelled() and race.exception() is None:
            race.result().call.cancel()
        race.cancel()

    # ---- answers ---------------------------------------------------------------------------------

    async def complete(self, adm: Admission, req: types_pb2.ChatRequest,
                       control: gateway_pb.CacheControl) -> Outcome:
        d: Decision | None = None
        upstream = False
        try:
            d = await self.decide(adm, req, control)
            if d.answer is not None:
                a = d.answer
                self._settle_hit(adm, d)
                return Outcome(d, a.content, a.model, a.usage, a.finish_reason or "stop")
            since = time.perf_counter()
            upstream = True
            try:
                resp = await self.reasoner.Complete(
                    reasoner_pb.CompleteRequest(request=req, plan=d.plan, tenant=adm.principal.team,
                                                coalesce_key=_coalesce_key(d, req)),
                    timeout=self.deadlines.reason_s)
            except grpc.RpcError as exc:
                raise api_error_from_remote(parse_rpc_error(exc), "reasoner") from exc
            finally:
                d.timings.add("upstream", since)
        except BaseException as exc:
            self._settle_failure(adm, d, exc, upstream)
            if isinstance(exc, ApiError):
                adm.error(exc)
            raise
        self.policy.settle(adm, _answered(resp.model, resp.usage, resp.coalesced, d.id), d.timings)
        if resp.tool_calls_json:
            d.drop_embedding()
        else:
            self._store(d, req, resp.content, resp.model, resp.usage, resp.finish_reason, control.ttl_seconds)
        return Outcome(d, resp.content, resp.model, resp.usage, resp.finish_reason, resp.tool_calls_json)

    async def stream(self, adm: Admission, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl,
                     on_decision: Callable[[Decision], Awaitable[None]] | None = None) -> StreamSession:
        """`on_decision` (background jobs) hears the cache and routing decision before the upstream call."""
        d: Decision | None = None
        upstream = False
        attempts: list[reasoner_pb.Attempt] = []
        race = control.race == gateway_pb.UPSTREAM_RACE_ON or (
            control.race == gateway_pb.UPSTREAM_RACE_UNSPECIFIED and self.settings.stream_race and on_decision is None)
        try:
            d = await self.decide(adm, req, control, race=race)
            if on_decision is not None:
                await on_decision(d)
            if d.answer is not None:
                return self._session(adm, d, d.answer.model, _replay(d.answer))
            upstream = True
            if d.race is not None:
                attempts = d.race_attempts
                opened = await d.race
            else:
                opened = await self._open(adm, d, req, d.plan, attempts)
        except BaseException as exc:
            if d is not None and d.race is not None:
                self.drop_race(d)
            self._settle_failure(adm, d, exc, upstream)
            if isinstance(exc, ApiError):
                adm.error(exc)
                exc.attempts = attempts
            raise
        session = self._session(adm, d, opened.started.model, self._relay(d, req, control, opened.call, opened.it))
        session.attempts = attempts
        return session

    async def _open(self, adm: Admission, d: Decision, req: types_pb2.ChatRequest,
                    plan: list[types_pb2.RouteTarget], attempts: list[reasoner_pb.Attempt],
                    raced: bool = False) -> _Opened:
        """Calls the reasoner and waits for the answering target to start; failed attempts go to `attempts`."""
        since = time.perf_counter()
        if raced:
            d.raced = plan[0].model if plan else ""
        call = self.reasoner.StreamComplete(
            reasoner_pb.StreamCompleteRequest(request=req, plan=plan, tenant=adm.principal.team,
                                              coalesce_key=_coalesce_key(d, req)),
            timeout=self.deadlines.reason_s)
        it = call.__aiter__()
        try:
            while True:
                ev = await it.__anext__()
                kind = ev.WhichOneof("event")
                if kind == "started":
                    return _Opened(call, it, ev.started)
                if kind == "attempt":
                    attempts.append(ev.attempt)
        except StopAsyncIteration:
            call.cancel()
            d.raced = ""  # nothing was answered: nothing billed
            raise ApiError(502, "upstream ended the stream before answering", type="upstream_error") from None
        except grpc.RpcError as exc:
            d.raced = ""
            raise api_error_from_remote(parse_rpc_error(exc), "reasoner") from exc
        except BaseException:
            call.cancel()  # cancelled (a raced call after a semantic hit, or the client left)
            raise
        finally:
            d.timings.add("upstream_ttfb", since)

    def _session(self, adm: Admission, d: Decision, model: str,
                 inner: AsyncGenerator[StreamEvent, None]) -> StreamSession:
        def abandon() -> None:
            if d.answer is not None:
                self._settle_hit(adm, d)
            else:
                self.policy.settle(adm, Settlement("cancelled", model, MISS, types_pb2.Usage(
                    prompt_tokens=adm.prompt_tokens), request_id=d.id), d.timings)

        return StreamSession(d, model, self._metered(adm, d, model, inner), abandon)

    async def _metered(self, adm: Admission, d: Decision, model: str,
                       inner: AsyncGenerator[StreamEvent, None]) -> AsyncGenerator[StreamEvent, None]:
        """Relays a stream and settles it at its end: the real usage when it completed, else the prompt and
        the tokens that were streamed (what the provider bills for a cut stream)."""
        parts: list[str] = []
        end: reasoner_pb.Done | None = None
        status = "cancelled"
        since = time.perf_counter()
        try:
            async for ev in inner:
                if ev.end is not None:
                    end, status = ev.end, "ok"
                else:
                    parts.append(ev.content)
                yield ev
        except ApiError:
            status = "error"
            raise
        finally:
            await inner.aclose()
            d.drop_embedding()  # the stream ended without a store (the store took it otherwise)
            if d.answer is not None:
                self._settle_hit(adm, d)
            else:
                d.timings.add("upstream_stream", since)
                if end is not None:
                    self.policy.settle(adm, _answered(end.model or model, end.usage, end.coalesced, d.id), d.timings)
                else:
                    usage = types_pb2.Usage(prompt_tokens=adm.prompt_tokens,
                                            completion_tokens=self.counter.text("".join(parts)))
                    self.policy.settle(adm, Settlement(status, model, MISS, usage, request_id=d.id), d.timings)

    async def _relay(self, d: Decision, req: types_pb2.ChatRequest, control: gateway_pb.CacheControl,
                     call: Any, it: AsyncIterator[reasoner_pb.StreamCompleteResponse],
                     ) -> AsyncGenerator[StreamEvent, None]:
        parts: list[str] = []
        tool_calls = False
        try:
            async for ev in it:
                kind = ev.WhichOneof("event")
                if kind == "delta":
                    parts.append(ev.delta.content)
                    tool_calls = tool_calls or bool(ev.delta.tool_calls_json)
                    yield StreamEvent(ev.delta.content, ev.delta.reasoning, ev.delta.tool_calls_json)
                elif kind == "attempt":
                    yield StreamEvent(attempt=ev.attempt)
                elif kind == "done":
                    if not tool_calls:
                        self._store(d, req, "".join(parts), ev.done.model, ev.done.usage, ev.done.finish_reason,
                                    control.ttl_seconds)
                    yield StreamEvent(end=ev.done)
                    return
        except grpc.RpcError as exc:
            raise api_error_from_remote(parse_rpc_error(exc), "reasoner") from exc
        finally:
            call.cancel()
        raise ApiError(502, "upstream stream ended without completing the answer", type="upstream_error",
                       code="stream_interrupted")


def _coalesce_key(d: Decision, req: types_pb2.ChatRequest) -> str:
    """Identical concurrent requests share one upstream call (the reasoner coalesces on this key): those whose
    answer would be cached, or is deterministic anyway; "" for the rest."""
    return chat.exact_key(d.tenant, req) if d.store or chat.is_deterministic(req) else ""


def _answered(model: str, usage: types_pb2.Usage, coalesced: bool, request_id: str) -> Settlement:
    """A complete answer from the reasoner. A coalesced copy (an identical request's in-flight call answered it)
    spent nothing: the call is charged once, to the request that made it; the copy records what it saved."""
    if coalesced:
        return Settlement("ok", model, MISS, types_pb2.Usage(), saved_model=model, saved_usage=usage,
                          request_id=request_id)
    return Settlement("ok", model, MISS, usage, request_id=request_id)


async def _replay(answer: cache_pb.CachedAnswer) -> AsyncGenerator[StreamEvent, None]:
    """A cached answer as stream deltas of a few words each, then the end event."""
    words = answer.content.split(" ")
    for i in range(0, len(words), 4):
        chunk = " ".join(words[i:i + 4])
        yield StreamEvent(chunk if i + 4 >= len(words) else chunk + " ")
    yield StreamEvent(end=reasoner_pb.Done(model=answer.model, usage=answer.usage,
                                           finish_reason=answer.finish_reason or "stop"))
