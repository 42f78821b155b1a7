"""EmbedderService: Embed, EmbedBatch and GetModelInfo over the micro-batched ONNX engine."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import grpc

from services.embedder.batcher import Embedded, MicroBatcher
from services.embedder.engine import Engine, EngineOptions, Judge
from services.embedder.settings import EmbedderSettings
from weir.common.v1 import types_pb2
from weir.embedder.v1 import embedder_service_pb2 as pb
from weir.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from weir.kit import metrics, telemetry
from weir.kit import semconv as sc
from weir.kit.errors import WeirError, invalid_argument
from weir.kit.lru import LruCache, text_key

log = logging.getLogger("weir.embedder")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbedderService"].full_name


_QUEUE_DEPTH = metrics.gauge("weir_embedder_queue_depth", "Texts waiting for a model run")
_TEXTS = metrics.counter("weir_embedder_texts", "Texts embedded by Embed, by source (lru or model)", ("source",))
_PAIRS = metrics.counter("weir_embedder_judged_pairs", "Text pairs scored by the paraphrase judge")

class EmbedderService(pb_grpc.EmbedderServiceServicer):
    """Sentence embeddings with a recent-text LRU in front of a micro-batched ONNX Runtime engine."""

    service_names: tuple[str, ...] = (SERVICE_NAME,)

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._judge: Judge | None = None
        self._batcher: MicroBatcher | None = None
        self._lru: LruCache[Embedded] = LruCache(settings.lru_size)

    # ------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        s = self.settings
        options = EngineOptions(
            providers=s.providers, workers=s.workers, intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
            allow_spinning=s.allow_spinning, max_batch=s.max_batch,
        )
        engine = await asyncio.to_thread(Engine, s.model_dir, options)
        if s.judge:
            # Scored once per semantic lookup with candidates, not per request: one session on every core.
            judge_options = EngineOptions(providers=s.providers, workers=1, inter_op_threads=s.inter_op_threads,
                                          allow_spinning=s.allow_spinning, max_batch=s.max_pairs * 2)
            self._judge = await asyncio.to_thread(Judge, s.judge_dir, judge_options)
        self._engine = engine
        self._batcher = MicroBatcher(engine.embed, s.max_batch, s.max_wait_ms / 1000, engine.workers)
        self._batcher.start()
        batcher = self._batcher
        _QUEUE_DEPTH.set_function(lambda: batcher.queued)
        log.info(
            "model loaded",
            extra={"model_id": engine.model_id, "providers": engine.providers,
                   "workers": engine.workers, "intra_op_threads": engine.intra_op_threads,
                   "lone_run_threads": engine.solo_threads,
                   "model_dir": str(s.model_dir),
                   "judge_id": self._judge.model_id if self._judge else None},
        )

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_EmbedderServiceServicer_to_server(self, server)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise WeirError(grpc.StatusCode.UNAVAILABLE, "the embedder is starting", reason="NOT_READY")
        return self._engine

    @property
    def batcher(self) -> MicroBatcher:
        if self._batcher is None:
            raise WeirError(grpc.StatusCode.UNAVAILABLE, "the embedder is starting", reason="NOT_READY")
        return self._batcher

    # ------------------------------------------------------------------------------------------ RPCs
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        problem = self._text_problem(request.text)
        if problem is not None:
            reason, description = problem
            raise invalid_argument(f"text {description}", ("text", description), reason=reason)
        engine = self.engine
        key = text_key(request.text)
        item = self._lru.get(key)
        cached = item is not None
        if item is None:
            item = await self.batcher.submit([request.text])[0]
            self._lru.put(key, item)
        telemetry.set_attributes({sc.GEN_AI_OPERATION_NAME: "embeddings", sc.GEN_AI_REQUEST_MODEL: engine.model_id,
                                  sc.WEIR_EMBED_CACHED: cached, sc.WEIR_EMBED_TRUNCATED: item.truncated,
                                  sc.WEIR_EMBED_TOKENS: item.token_count})
        _TEXTS.labels("lru" if cached else "model").inc()
        return pb.EmbedResponse(
            embedding=types_pb2.Embedding(vector=item.vector, dim=engine.dim, model_id=engine.model_id),
            truncated=item.truncated,
            token_count=item.token_count,
            cached=cached,
        )

    async def EmbedBatch(
        self, request: pb.EmbedBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedBatchResponse:
        texts = list(request.texts)
        self._check_batch(texts)
        engine = self.engine
        items: list[Embedded | None] = []
        missing: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            key = text_key(text)
            if key in missing:  # the same text twice in one call: embed it once
                missing[key].append(i)
                items.append(None)
                continue
            item = self._lru.get(key)
            items.append(item)
            if item is None:
                missing[key] = [i]
        if missing:
            keys = list(missing)
            futures = self.batcher.submit([texts[missing[k][0]] for k in keys])
            for key, embedded in zip(keys, await asyncio.gather(*futures), strict=True):
                self._lru.put(key, embedded)
                for i in missing[key]:
                    items[i] = embedded
        done = cast(list[Embedded], items)  # every slot is filled above
        return pb.EmbedBatchResponse(
            vectors=b"".join(item.vector for item in done),
            dim=engine.dim,
            model_id=engine.model_id,
            truncated=[item.truncated for item in done],
            token_counts=[item.token_count for item in done],
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        engine, batcher, m = self.engine, self.batcher, self.engine.manifest
        return pb.GetModelInfoResponse(
            model_id=engine.model_id,
            dim=m.dim,
            max_seq_length=m.max_seq_length,
            pooling=m.pooling,
            normalized=m.normalized,
            source=m.source,
            checksum=m.checksum,
            execution_providers=engine.providers,
            max_batch_size=batcher.max_batch,
            max_batch_wait_ms=batcher.max_wait_s * 1000,
            intra_op_threads=engine.intra_op_threads,
            lru_hits=self._lru.hits,
            lru_misses=self._lru.misses,
            lru_size=len(self._lru),
            runs=batcher.runs,
            texts_embedded=batcher.texts_embedded,
            judge_id=self._judge.model_id if self._judge else "",
        )

    async def ScorePairs(
        self, request: pb.ScorePairsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScorePairsResponse:
        pairs = [(p.a, p.b) for p in request.pairs]
        self._check_pairs(pairs)
        self.engine  # noqa: B018 - raises UNAVAILABLE while starting
        judge = self._judge
        if judge is None:
            raise WeirError(grpc.StatusCode.FAILED_PRECONDITION,
                            "this embedder runs without the paraphrase judge (WEIR_EMBEDDER_JUDGE=false)",
                            reason="JUDGE_NOT_LOADED")
        scores = await asyncio.to_thread(judge.score, pairs, request.reading != pb.PAIR_READING_B_FIRST)
        telemetry.set_attributes({sc.GEN_AI_REQUEST_MODEL: judge.model_id, "weir.judge.pairs": len(pairs)})
        _PAIRS.inc(len(pairs))
        return pb.ScorePairsResponse(scores=scores.tolist(), judge_id=judge.model_id)

    # ------------------------------------------------------------------------------------ validation
    def _text_problem(self, text: str) -> tuple[str, str] | None:
        """(reason, description) when `text` cannot be embedded, else None."""
        if not text.strip():
            return "EMPTY_TEXT", "must not be empty or blank"
        size = len(text.encode("utf-8"))
        if size > self.settings.max_text_bytes:
            return "TEXT_TOO_LARGE", (
                f"is {size} bytes of UTF-8; the limit is {self.settings.max_text_bytes} "
                "(WEIR_EMBEDDER_MAX_TEXT_BYTES)"
            )
        return None

    @staticmethod
    def _check_count(field: str, count: int, limit: int, setting: str) -> None:
        """INVALID_ARGUMENT when a repeated request field (texts, pairs) is empty or longer than `limit`."""
        if not count:
            raise invalid_argument(f"{field} must hold at least one {field[:-1]}", (field, "must not be empty"),
                                   reason="EMPTY_BATCH")
        if count > limit:
            description = f"holds {count} {field}; the limit is {limit} ({setting})"
            raise invalid_argument(f"{field} {description}", (field, description), reason=f"TOO_MANY_{field.upper()}")

    def _check_pairs(self, pairs: list[tuple[str, str]]) -> None:
        self._check_count("pairs", len(pairs), self.settings.max_pairs, "WEIR_EMBEDDER_MAX_PAIRS")
        violations = [(f"pairs[{i}].{side}", problem[1])
                      for i, pair in enumerate(pairs) for side, text in zip("ab", pair, strict=True)
                      if (problem := self._text_problem(text)) is not None]
        if violations:
            raise invalid_argument(
                f"{len(violations)} texts cannot be judged: " + "; ".join(f"{f} {d}" for f, d in violations[:5]),
                *violations, reason="INVALID_TEXTS",
            )

    def _check_batch(self, texts: list[str]) -> None:
        self._check_count("texts", len(texts), self.settings.max_items, "WEIR_EMBEDDER_MAX_ITEMS")
        violations: list[tuple[str, str]] = []
        reasons: set[str] = set()
        for i, text in enumerate(texts):
            problem = self._text_problem(text)
            if problem is not None:
                reasons.add(problem[0])
                violations.append((f"texts[{i}]", problem[1]))
        if violations:
            reason = reasons.pop() if len(reasons) == 1 else "INVALID_TEXTS"
            raise invalid_argument(
                f"{len(violations)} of {len(texts)} texts cannot be embedded: "
                + "; ".join(f"{f} {d}" for f, d in violations[:5]),
                *violations, reason=reason,
            )
