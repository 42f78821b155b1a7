"""The cache's gRPC servicer: an exact tier in Redis and a verified semantic tier in Milvus.

Lookups never fail because a tier is down: they answer a miss whose reason starts with "degraded:".
A semantic candidate is served only when it is in the caller's tenant partition and conversation
context, above the similarity threshold, and accepted by the verifier (services/cache/verifier.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from services.cache import judge, verifier
from services.cache.exact import ExactTier, RedisUnavailable
from services.cache.judge import JudgeClient, Scores
from services.cache.semantic import Candidate, DimensionMismatch, MilvusUnavailable, Row, SemanticTier, fits, quote
from services.cache.settings import CacheSettings
from weir import chat
from weir.cache.v1 import cache_service_pb2 as pb
from weir.cache.v1 import cache_service_pb2_grpc as pb_grpc
from weir.common.v1 import types_pb2
from weir.kit import metrics, tasks, telemetry
from weir.kit import semconv as sc
from weir.kit.config import describe
from weir.kit.errors import WeirError, invalid_argument

log = logging.getLogger("weir.cache")

MAX_TENANT_BYTES = 256
MAX_EMBEDDING_DIM = 8192
RECONNECT_S = 5.0
ENTRIES_EVERY_S = 15.0

LOOKUPS = metrics.counter("weir_cache_lookups", "Cache lookups by tier and outcome (hit, miss, refused, degraded)",
                          ("tier", "outcome"))
REFUSALS = metrics.counter("weir_cache_refusals", "Semantic candidates the verifier refused, by check", ("check",))
STORES = metrics.counter("weir_cache_stores", "Store calls by outcome (exact, exact+semantic, degraded)",
                         ("outcome",))
ENTRIES = metrics.gauge("weir_cache_entries", "Live entries of all tenants, by tier (refreshed every 15 s)",
                        ("tier",))


def _outcome(hit: bool, reason: str) -> str:
    return "hit" if hit else reason.split(":", 1)[0] or "miss"


T = TypeVar("T")


async def _milvus(operation: str, call: Awaitable[T]) -> T:
    """A Milvus call as a client span of the trace (the semantic tier's search and writes)."""
    span = telemetry.ClientSpan(f"milvus {operation}", {"db.system.name": "milvus", "db.operation.name": operation})
    try:
        result = await call
    except BaseException as exc:
        span.end(error=type(exc).__name__)
        raise
    span.end()
    return result


@dataclass
class Counters:
    """Lookup outcomes of one tenant since start."""

    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    exact_lookups: int = 0
    semantic_lookups: int = 0
    refusals: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counters) -> None:
        self.exact_hits += other.exact_hits
        self.semantic_hits += other.semantic_hits
        self.misses += other.misses
        self.exact_lookups += other.exact_lookups
        self.semantic_lookups += other.semantic_lookups
        self.refusals.update(other.refusals)


def _has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _check_tenant(tenant: str) -> None:
    if not tenant.strip():
        raise invalid_argument("tenant is required", ("tenant", "must not be empty"))
    if len(tenant.encode()) > MAX_TENANT_BYTES or _has_control_chars(tenant):
        raise invalid_argument("tenant is malformed",
                               ("tenant", f"at most {MAX_TENANT_BYTES} bytes, no control characters"))


def _too_long(question: str, settings: CacheSettings) -> str:
    return (f"question of {len(question)} characters is over the semantic tier's {settings.semantic_max_chars} "
            "(WEIR_CACHE_SEMANTIC_MAX_CHARS); the exact tier still serves it")


def _check_request(req: types_pb2.ChatRequest) -> None:
    if bad := chat.violations(req):
        raise invalid_argument("invalid chat request", *bad)


def _vector(emb: types_pb2.Embedding, name: str) -> np.ndarray:
    """The embedding as a float32 vector; INVALID_ARGUMENT when its fields disagree or it is not finite."""
    problems: list[tuple[str, str]] = []
    if not emb.model_id:
        problems.append((f"{name}.model_id", "must name the embedding model"))
    if not 0 < emb.dim <= MAX_EMBEDDING_DIM:
        problems.append((f"{name}.dim", f"must be in [1, {MAX_EMBEDDING_DIM}], got {emb.dim}"))
    elif len(emb.vector) != emb.dim * 4:
        problems.append((f"{name}.vector", f"must hold dim*4 = {emb.dim * 4} bytes (float32), got {len(emb.vector)}"))
    if problems:
        raise invalid_argument(f"{name} is malformed", *problems)
    v = np.frombuffer(emb.vector, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise invalid_argument(f"{name} is malformed", (f"{name}.vector", "must be finite and non-zero"))
    return v


class CacheService(pb_grpc.CacheServiceServicer):
    """LookupExact, LookupSemantic, Store, Invalidate and GetStats over the two tiers."""

    service_names: tuple[str, ...] = (pb.DESCRIPTOR.services_by_name["CacheService"].full_name,)

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.exact = ExactTier(settings.redis_url, settings.redis_prefix, settings.redis_timeout_s,
                               settings.redis_retry_after_s)
        self.semantic = SemanticTier(settings)
        verifier.set_analysis_cache(settings.verifier_cache_texts)
        self.policy = judge.Policy.from_settings(settings)
        self.judge = JudgeClient(settings.embedder_addr, settings.judge_timeout_s, settings.judge_lru,
                                 self.policy.pair_reading, settings.clients.mux) if settings.judge else None
        self._counters: dict[str, Counters] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._entries_at = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        redis_ok = await self.exact.ping()
        await self.semantic.connect()
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        log.info("cache ready", extra={"settings": describe(self.settings), "redis": redis_ok,
                                       "milvus": self.semantic.available, "milvus_uri": self.semantic.safe_uri()})

    async def close(self) -> None:
        await tasks.stop(self._maintenance)
        await self.semantic.close()
        await self.exact.close()
        if self.judge is not None:
            await self.judge.close()

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_CacheServiceServicer_to_server(self, server)

    async def _maintain(self) -> None:
        """Reconnects Milvus while it is down; otherwise runs the semantic tier's upkeep every second."""
        while True:
            await self._refresh_entries()
            if not self.semantic.available:
                await asyncio.sleep(RECONNECT_S)
                await self.semantic.connect()
                continue
            await asyncio.sleep(1.0)
            try:
                purged = await self.semantic.maintain()
            except MilvusUnavailable:
                continue
            except Exception as exc:  # maintenance must outlive a failed call
                self.semantic.note_error("maintenance", exc)
                continue
            if purged:
                log.info("expired semantic rows purged", extra={"rows": purged})

    async def _refresh_entries(self) -> None:
        """Refreshes the entries gauge now and then (counting reads Redis)."""
        now = time.monotonic()
        if now - self._entries_at < ENTRIES_EVERY_S:
            return
        self._entries_at = now
        with contextlib.suppress(RedisUnavailable):
            exact_n, semantic_n = await self.exact.counts(None)
            ENTRIES.labels("exact").set(exact_n)
            ENTRIES.labels("semantic").set(semantic_n)

    def _tenant_counters(self, tenant: str) -> Counters:
        c = self._counters.get(tenant)
        if c is None:
            c = self._counters[tenant] = Counters()
        return c

    # ---- lookups ---------------------------------------------------------------------------------

    async def LookupExact(self, request: pb.LookupExactRequest, context: grpc.aio.ServicerContext
                          ) -> pb.LookupExactResponse:
        out = await self._lookup_exact(request)
        self._tenant_counters(request.tenant).exact_lookups += 1
        LOOKUPS.labels("exact", _outcome(out.hit, out.reason)).inc()
        return out

    async def _lookup_exact(self, request: pb.LookupExactRequest) -> pb.LookupExactResponse:
        _check_tenant(request.tenant)
        _check_request(request.request)
        counters = self._tenant_counters(request.tenant)
        key = chat.exact_key(request.tenant, request.request)
        try:
            blob = await self.exact.get(request.tenant, key)
        except RedisUnavailable:
            counters.misses += 1
            return pb.LookupExactResponse(hit=False, reason="degraded: redis unavailable")
        if blob is None:
            counters.misses += 1
            return pb.LookupExactResponse(hit=False, reason="miss")
        counters.exact_hits += 1
        return pb.LookupExactResponse(hit=True, answer=pb.CachedAnswer.FromString(blob), reason="hit")

    async def LookupSemantic(self, request: pb.LookupSemanticRequest, context: grpc.aio.ServicerContext
                             ) -> pb.LookupSemanticResponse:
        out = await self._lookup_semantic(request)
        self._tenant_counters(request.tenant).semantic_lookups += 1
        LOOKUPS.labels("semantic", _outcome(out.hit, out.reason)).inc()
        best = out.candidates[0] if out.candidates else None
        telemetry.set_attributes({
            sc.WEIR_TENANT: request.tenant, sc.WEIR_CACHE_TIER: "semantic" if out.hit else "miss",
            sc.WEIR_CACHE_REASON: out.reason, sc.WEIR_CACHE_CANDIDATES: len(out.candidates),
            sc.WEIR_CACHE_SIMILARITY: out.similarity or (best.similarity if best else None),
            sc.WEIR_CACHE_VERDICT: "accepted" if out.hit else (best.verdict if best else None)})
        return out

    async def _lookup_semantic(self, request: pb.LookupSemanticRequest) -> pb.LookupSemanticResponse:
        _check_tenant(request.tenant)
        _check_request(request.request)
        vector = _vector(request.embedding, "embedding")
        counters = self._tenant_counters(request.tenant)
        question = chat.semantic_text(request.request)
        if not question.strip():
            counters.misses += 1
            return pb.LookupSemanticResponse(hit=False, reason="miss: no question text")
        if len(question) > self.settings.semantic_max_chars:
            counters.misses += 1
            return pb.LookupSemanticResponse(hit=False, reason=f"miss: {_too_long(question, self.settings)}")
        ctx = chat.context_key(request.tenant, request.request)
        try:
            candidates = await _milvus("search", self.semantic.search(request.tenant, ctx,
                                                                      request.embedding.model_id, vector))
        except DimensionMismatch as exc:
            raise invalid_argument(str(exc), ("embedding.dim", f"must be {exc.expected} for this model")) from exc
        except MilvusUnavailable as exc:
            counters.misses += 1
            return pb.LookupSemanticResponse(hit=False, reason=f"degraded: milvus unavailable ({exc})")
        except Exception as exc:  # a failing Milvus degrades the tier, never the request
            counters.misses += 1
            reason = self.semantic.note_error("search", exc)
            return pb.LookupSemanticResponse(hit=False, reason=f"degraded: milvus unavailable ({reason})")

        out = pb.LookupSemanticResponse(hit=False)
        policy = self.policy
        refused: tuple[float, verifier.Verdict] | None = None
        #: Candidates the judge has a say on, best first.
        pending: list[tuple[Candidate, pb.SemanticCandidate, judge.Reading]] = []

        def refuse(cand: Candidate, verdict: verifier.Verdict) -> None:
            """Counts a refusal; the most similar refused candidate names the reason (and gives the preview)."""
            nonlocal refused
            self._count_refusal(counters, verdict.check)
            if refused is None or refused[0] < cand.similarity:
                refused = (cand.similarity, verdict)
                if request.include_preview:
                    out.preview.ParseFromString(cand.answer)

        for cand in candidates:
            item = out.candidates.add(entry_id=cand.entry_id, similarity=cand.similarity, question=cand.question)
            reading = policy.read(question, cand.question, cand.similarity)
            verdict = reading.verdict
            item.verdict, item.detail = (verifier.ACCEPTED if verdict.ok else verdict.check), verdict.detail
            if reading.kind == judge.SERVE:
                return self._serve(out, cand, counters, "hit")
            if reading.kind in (judge.VETO, judge.OVERRULE):
                pending.append((cand, item, reading))
            elif reading.kind == judge.REFUSE:
                refuse(cand, verdict)
        if pending and self.judge is not None:
            # The best candidate first, alone: it is the one served on most hits, and a hit should not wait for
            # the judge to read the others too (≈ 2.5 ms each). The rest are read, in one call, only when it is
            # refused, so the outcome is the one a single call for all would give: the first served, best first.
            # A judge that did not answer is not asked again in this lookup: the rules decide the rest alone.
            scores = Scores()
            for n, group in enumerate((pending[:1], pending[1:])):
                if not group:
                    break
                if n == 0 or scores.scores:
                    scores = await self.judge.score([(question, cand.question) for cand, _, _ in group])
                if n == 0:
                    telemetry.set_attributes({sc.WEIR_CACHE_JUDGE: scores.judge_id or scores.unavailable,
                                              sc.WEIR_CACHE_JUDGE_SCORE: scores.scores[0] if scores.scores else None})
                for i, (cand, item, reading) in enumerate(group):
                    score = scores.scores[i] if scores.scores else None
                    served, verdict = policy.settle(reading, cand.similarity, score, scores.unavailable)
                    item.verdict, item.detail = (verifier.ACCEPTED if verdict.ok else verdict.check), verdict.detail
                    if served:
                        return self._serve(out, cand, counters,
                                           "hit" if reading.kind == judge.VETO else f"hit: {verdict.detail}")
                    refuse(cand, verdict)
        counters.misses += 1
        if refused is not None:
            out.similarity = refused[0]
            out.reason = f"refused: {refused[1].check} ({refused[1].detail})"
        elif candidates:
            out.similarity = candidates[0].similarity
            out.reason = f"miss: below threshold (best {candidates[0].similarity:.3f} < {policy.floor:.3f})"
        else:
            out.reason = "miss: no candidate"
        return out

    def _serve(self, out: pb.LookupSemanticResponse, cand: Candidate, counters: Counters,
               reason: str) -> pb.LookupSemanticResponse:
        counters.semantic_hits += 1
        out.hit, out.similarity, out.reason = True, cand.similarity, reason
        out.answer.ParseFromString(cand.answer)
        return out

    @staticmethod
    def _count_refusal(counters: Counters, check: str) -> None:
        counters.refusals[check] += 1
        REFUSALS.labels(check).inc()

    # ---- writes ----------------------------------------------------------------------------------

    async def Store(self, request: pb.StoreRequest, context: grpc.aio.ServicerContext) -> pb.StoreResponse:
        tenant, req = request.tenant, request.request
        _check_tenant(tenant)
        _check_request(req)
        if not request.answer.content:
            raise invalid_argument("answer is empty", ("answer.content", "must not be empty"))
        if request.ttl_seconds < 0:
            raise invalid_argument("ttl_seconds is negative", ("ttl_seconds", "must be >= 0 (0 = default)"))
        emb = request.embedding
        given = bool(emb.vector or emb.dim or emb.model_id)
        vector = _vector(emb, "embedding") if given else None
        if vector is not None and self.semantic.available:
            try:
                self.semantic.check_dim(emb.model_id, int(vector.shape[0]))
            except DimensionMismatch as exc:
                raise invalid_argument(str(exc), ("embedding.dim", f"must be {exc.expected} for this model")) from exc

        key = chat.exact_key(tenant, req)
        entry_id = key[:32]
        now_ms = int(time.time() * 1000)
        ttl_ms = (request.ttl_seconds or self.settings.ttl_s) * 1000
        answer = pb.CachedAnswer()
        answer.CopyFrom(request.answer)
        answer.entry_id = entry_id
        answer.question = chat.semantic_text(req)
        if not answer.created_unix:
            answer.created_unix = now_ms // 1000
        model = answer.model or req.model
        blob = answer.SerializeToString()

        row: Row | None = None
        skipped = ""
        if vector is not None:
            row = Row(entry_id=entry_id, tenant=tenant, context_key=chat.context_key(tenant, req), model=model,
                      question=answer.question, answer=blob, created_ms=now_ms, expires_ms=now_ms + ttl_ms,
                      vector=vector)
            if not answer.question.strip():
                row, skipped = None, "semantic skipped: no question text"
            elif len(answer.question) > self.settings.semantic_max_chars:
                row, skipped = None, f"semantic skipped: {_too_long(answer.question, self.settings)}"
            elif not fits(row):
                row, skipped = None, "semantic skipped: question or answer too large"
            elif not self.semantic.available:
                row, skipped = None, f"semantic degraded: milvus unavailable ({self.semantic.unavailable_reason})"
        collection = self.semantic.collection_name(emb.model_id) if row is not None else ""

        try:
            outcome = await self.exact.store(tenant, entry_id, key, blob, model, collection, ttl_ms,
                                             self.settings.max_entries_per_tenant,
                                             row.context_key if row is not None else "")
        except RedisUnavailable:
            STORES.labels("degraded").inc()
            return pb.StoreResponse(stored=False, reason="degraded: redis unavailable")

        stale: dict[str, list[str]] = {}
        for victim, coll in outcome.evicted:
            if coll:
                stale.setdefault(coll, []).append(victim)
        if outcome.previous_collection and outcome.previous_collection != collection:
            stale.setdefault(outcome.previous_collection, []).append(entry_id)
        if outcome.evicted:
            log.info("capacity eviction", extra={"tenant": tenant, "evicted": len(outcome.evicted)})
        if stale:
            await self._delete_semantic(tenant, stale)

        tiers = "exact"
        if row is not None:
            try:
                await _milvus("upsert", self.semantic.upsert(row, emb.model_id))
                tiers = "exact+semantic"
            except DimensionMismatch as exc:  # the collection appeared meanwhile with another dimension
                skipped = f"semantic skipped: {exc}"
            except Exception as exc:  # the exact tier holds the entry; semantic degrades
                reason = str(exc) if isinstance(exc, MilvusUnavailable) else self.semantic.note_error("upsert", exc)
                skipped = f"semantic degraded: milvus unavailable ({reason})"
            if tiers == "exact":
                with contextlib.suppress(RedisUnavailable):
                    await self.exact.unmark_semantic(tenant, entry_id)
        elif not skipped:
            skipped = "no embedding"
        reason = f"stored: {tiers}" + (f"; {skipped}" if skipped else "")
        STORES.labels(tiers).inc()
        return pb.StoreResponse(stored=True, entry_id=entry_id, reason=reason)

    async def _delete_semantic(self, tenant: str, by_collection: dict[str, list[str]]) -> None:
        """Best-effort removal of evicted or superseded rows (expired rows are never served anyway)."""
        try:
            await self.semantic.delete_ids(tenant, by_collection)
        except Exception as exc:
            self.semantic.note_error("delete", exc)

    async def Invalidate(self, request: pb.InvalidateRequest, context: grpc.aio.ServicerContext
                         ) -> pb.InvalidateResponse:
        tenant = request.tenant
        _check_tenant(tenant)
        scope = request.WhichOneof("scope")
        if scope == "entry_id":
            value = request.entry_id
            if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
                raise invalid_argument("entry_id is malformed", ("entry_id", "must be 32 lowercase hex characters"))
            mode, clause = "id", f'id == "{value}"'
        elif scope == "model":
            value = request.model
            if not value or _has_control_chars(value):
                raise invalid_argument("model is malformed", ("model", "must be non-empty, no control characters"))
            mode, clause = "model", f"model == {quote(value)}"
        elif scope == "all" and request.all:
            mode, value, clause = "all", "", ""
        else:
            raise invalid_argument("nothing to invalidate", ("scope", "set entry_id, model or all=true"))

        try:
            removed = await self.exact.invalidate(tenant, mode, value)
        except RedisUnavailable as exc:
            raise WeirError(grpc.StatusCode.UNAVAILABLE, f"exact tier unavailable, nothing removed: {exc}",
                            reason="REDIS_UNAVAILABLE", retry_after_s=self.settings.redis_retry_after_s) from exc
        live = {r.entry_id for r in removed if r.live}
        try:
            live |= await self.semantic.delete_where(tenant, clause)
        except Exception as exc:  # the caller must learn the semantic tier was not cleared
            reason = str(exc) if isinstance(exc, MilvusUnavailable) else self.semantic.note_error("invalidate", exc)
            raise WeirError(grpc.StatusCode.UNAVAILABLE,
                            f"semantic tier unavailable ({reason}); exact tier invalidated "
                            f"({len(live)} entries), retry to clear the semantic tier",
                            reason="MILVUS_UNAVAILABLE", retry_after_s=RECONNECT_S) from exc
        log.info("invalidated", extra={"tenant": tenant, "scope": scope, "removed": len(live)})
        return pb.InvalidateResponse(removed=len(live))

    # ---- stats -----------------------------------------------------------------------------------

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        if request.tenant:
            _check_tenant(request.tenant)
            total = Counters()
            total.add(self._counters.get(request.tenant, Counters()))  # a copy: readers' counts are added below
        else:
            total = Counters()
            for c in self._counters.values():
                total.add(c)
        try:
            exact_n, semantic_n = await self.exact.counts(request.tenant or None)
            readers = await self.exact.reader_counts(request.tenant or None)
        except RedisUnavailable as exc:
            raise WeirError(grpc.StatusCode.UNAVAILABLE, f"cannot count entries: {exc}",
                            reason="REDIS_UNAVAILABLE", retry_after_s=self.settings.redis_retry_after_s) from exc
        # Lookups the gateway answered from the exact tier without this service (weir/exact_cache.py).
        total.add(Counters(exact_hits=readers["exact_hits"], misses=readers["misses"],
                           exact_lookups=readers["exact_lookups"]))
        refusals = {name: total.refusals.get(name, 0) for name in (*verifier.CHECK_NAMES, "judge")}
        refusals.update(total.refusals)
        return pb.GetStatsResponse(
            exact_entries=exact_n,
            semantic_entries=semantic_n,
            exact_hits=total.exact_hits,
            semantic_hits=total.semantic_hits,
            misses=total.misses,
            refusals_by_check=refusals,
            exact_lookups=total.exact_lookups,
            semantic_lookups=total.semantic_lookups,
            exact_hit_rate=total.exact_hits / total.exact_lookups if total.exact_lookups else 0.0,
            semantic_hit_rate=total.semantic_hits / total.semantic_lookups if total.semantic_lookups else 0.0,
        )
