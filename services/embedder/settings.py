"""Embedder settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weir.kit.config import Port, default_judge_dir, default_model_dir, env, load
from weir.kit.server import ServerSettings


@dataclass(frozen=True)
class EmbedderSettings:
    port: Port = env("WEIR_EMBEDDER_PORT", 50051, help="gRPC EmbedderService port")
    model_dir: Path = env(
        "WEIR_EMBEDDER_MODEL_DIR", default_model_dir(),
        help="exported model (manifest.json, model.onnx, tokenizer.json); `make model` creates it",
    )
    judge: bool = env(
        "WEIR_EMBEDDER_JUDGE", True,
        help="load the paraphrase judge (ScorePairs, used by the cache's verifier); false: ScorePairs refuses",
    )
    judge_dir: Path = env(
        "WEIR_EMBEDDER_JUDGE_DIR", default_judge_dir(),
        help="exported paraphrase judge (manifest.json, model.onnx, tokenizer.json); `make model` creates it",
    )
    max_pairs: int = env("WEIR_EMBEDDER_MAX_PAIRS", 64, help="most pairs in one ScorePairs call")
    providers: tuple[str, ...] = env(
        "WEIR_EMBEDDER_PROVIDERS", (),
        help="ONNX Runtime execution providers in priority order, e.g. CUDAExecutionProvider; empty: auto",
    )
    workers: int = env(
        "WEIR_EMBEDDER_WORKERS", 0,
        help="model runs side by side; 0: auto (CPU: min(2, cores) runs of cores/workers threads; GPU: 1)",
    )
    intra_op_threads: int = env(
        "WEIR_EMBEDDER_INTRA_OP_THREADS", 0,
        help="threads per run; 0: usable cores / workers (the CPU affinity, capped by a container CPU limit)")
    inter_op_threads: int = env("WEIR_EMBEDDER_INTER_OP_THREADS", 1,
                                help="ONNX Runtime inter-op threads (the graph runs sequentially: 1 is enough)")
    allow_spinning: bool = env(
        "WEIR_EMBEDDER_ORT_SPINNING", False,
        help="ONNX Runtime worker threads busy-wait for work: a little lower latency on an idle box, much "
        "lower throughput when other processes share the cores"
    )
    max_batch: int = env("WEIR_EMBEDDER_MAX_BATCH", 64, help="largest micro-batch (texts per model run)")
    max_wait_ms: float = env(
        "WEIR_EMBEDDER_MAX_WAIT_MS", 2.0, help="longest a request waits for a micro-batch to fill"
    )
    lru_size: int = env("WEIR_EMBEDDER_LRU_SIZE", 4096, help="recent-text cache entries; 0 turns it off")
    max_items: int = env("WEIR_EMBEDDER_MAX_ITEMS", 256, help="most texts in one EmbedBatch call")
    max_text_bytes: int = env("WEIR_EMBEDDER_MAX_TEXT_BYTES", 32 * 1024, help="largest text, UTF-8 bytes")
    server: ServerSettings = field(default_factory=lambda: load(ServerSettings))

    def validate(self) -> list[str]:
        problems = []
        if min(self.workers, self.intra_op_threads, self.inter_op_threads) < 0:
            problems.append("WEIR_EMBEDDER_WORKERS / _INTRA_OP_THREADS / _INTER_OP_THREADS: must be >= 0")
        if self.max_batch < 1:
            problems.append("WEIR_EMBEDDER_MAX_BATCH: must be >= 1")
        if self.max_wait_ms < 0:
            problems.append("WEIR_EMBEDDER_MAX_WAIT_MS: must be >= 0")
        if self.lru_size < 0:
            problems.append("WEIR_EMBEDDER_LRU_SIZE: must be >= 0")
        if self.max_pairs < 1:
            problems.append("WEIR_EMBEDDER_MAX_PAIRS: must be >= 1")
        if self.max_items < 1:
            problems.append("WEIR_EMBEDDER_MAX_ITEMS: must be >= 1")
        if self.max_text_bytes < 1:
            problems.append("WEIR_EMBEDDER_MAX_TEXT_BYTES: must be >= 1")
        return problems
