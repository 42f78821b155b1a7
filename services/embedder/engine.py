"""The embedding engine: an exported model directory run with ONNX Runtime.

Blocking by design (tokenisation and `InferenceSession.run` release the GIL for the heavy part): the
service calls `Engine.embed` from `Engine.workers` worker threads via the micro-batcher, never on the
event loop.

Any model directory in the `weir.model.manifest` layout works: its graph takes input_ids,
attention_mask and (optionally) token_type_ids and returns the pooled sentence embedding.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding

from weir.kit.config import cache_home
from weir.model.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, ModelDirError, read_manifest
from weir.model.tokenization import EncodedBatch, TextEncoder

log = logging.getLogger("weir.embedder.engine")

OUTPUT_NAME = "sentence_embedding"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: A model run costs about as much fixed overhead as this many extra padded tokens (measured on CPU).
RUN_OVERHEAD_TOKENS = 32

FloatMatrix = npt.NDArray[np.float32]


class EngineError(RuntimeError):
    """The engine cannot start: bad model directory or unusable execution providers."""


@dataclass(frozen=True)
class EngineOptions:
    """How to run the model (see services.embedder.settings for the environment variables)."""

    providers: tuple[str, ...] = ()
    #: Model runs side by side; 0: auto (CPU: min(2, cores), each on cores // workers threads; GPU: 1).
    workers: int = 0
    #: Threads of one run; 0: usable cores // workers.
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    #: Largest batch the service will send; sizes TensorRT's optimisation profile.
    max_batch: int = 64


@dataclass(frozen=True)
class Embeddings:
    """Result of one `Engine.embed` call, rows in input order."""

    vectors: FloatMatrix
    token_counts: list[int]
    truncated: list[bool]


def plan_runs(lengths: Sequence[int], overhead_tokens: int = RUN_OVERHEAD_TOKENS) -> list[list[int]]:
    """Groups texts (by index) into model runs so padding waste stays below the cost of an extra run.

    Texts are taken shortest first; a new run starts when padding the current run up to the next
    text would add more padded tokens than a run's fixed overhead is worth.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    runs: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and len(current) * (lengths[i] - width) > overhead_tokens:
            runs.append(current)
            current = []
        current.append(i)
        width = lengths[i]
    if current:
        runs.append(current)
    return runs


CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may keep busy: its CPU affinity, capped by a cgroup CPU quota (a container's CPU limit,
    which the affinity does not show: a pod limited to 2 CPUs on a 64-core node sees 64 cores). ONNX Runtime's
    thread pools are sized from it; more threads than the quota allows are throttled, not faster."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time per period this cgroup may use (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def provider_candidates(requested: Sequence[str], available: Sequence[str]) -> list[list[str]]:
    """Provider lists to try in order: the requested one, or GPU ones first when present, then CPU."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineError(
                f"WEIR_EMBEDDER_PROVIDERS names {', '.join(missing)}, which this onnxruntime lacks; "
                f"available: {', '.join(available)}"
            )
        chain = list(requested)
        return [chain if CPU in chain else [*chain, CPU]]
    candidates: list[list[str]] = []
    if TENSORRT in available:
        candidates.append([TENSORRT, CUDA, CPU] if CUDA in available else [TENSORRT, CPU])
    if CUDA in available:
        candidates.append([CUDA, CPU])
    candidates.append([CPU])
    return candidates


class Engine:
    """A loaded model: tokenizer + ONNX Runtime session + its manifest."""

    #: The manifest `kind` this engine runs.
    KIND = "embedding"
    #: What the model is called in errors, and the setting that points at its directory.
    WHAT, SETTING = "embedding model", "WEIR_EMBEDDER_MODEL_DIR"

    def __init__(self, model_dir: Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        try:
            self.manifest: Manifest = read_manifest(model_dir)
            if self.manifest.kind != self.KIND:
                raise ModelDirError(f"it holds a {self.manifest.kind!r} model, not a {self.KIND!r} one")
            self.encoder = TextEncoder(model_dir / TOKENIZER_FILE, self.manifest.max_seq_length)
        except (ModelDirError, OSError, ValueError) as exc:
            raise EngineError(
                f"cannot load the {self.WHAT} from {model_dir}: {exc}. "
                f"Run `make model` (scripts/export-model.sh) to export it, or point "
                f"{self.SETTING} at an exported model directory."
            ) from exc
        self.model_dir = model_dir
        cores = usable_cores()
        cpu_workers = options.workers or min(2, cores)
        self.intra_op_threads = options.intra_op_threads or max(1, cores // cpu_workers)
        self.session = self._open_session(model_dir / MODEL_FILE, options)
        self.providers: list[str] = list(self.session.get_providers())
        #: How many `embed` calls may run at once (the session is thread-safe).
        self.workers = options.workers or (cpu_workers if self.providers[0] == CPU else 1)
        #: On CPU with spare cores: a second session using all of them for a run that has the machine
        #: to itself (a lone request on an idle embedder), so low load gets the lowest latency.
        self.solo_threads = self.intra_op_threads
        self._solo_session: ort.InferenceSession | None = None
        if self.providers[0] == CPU and self.workers > 1 and cores > self.intra_op_threads:
            self.solo_threads = cores
            self._solo_session = ort.InferenceSession(
                str(model_dir / MODEL_FILE), self._session_options(options, cores), providers=[CPU]
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def embed(self, texts: Sequence[str], solo: bool = False) -> Embeddings:
        """Embeds `texts` (blocking); similar lengths share a run, padded only to their longest.

        `solo`: no other run is going on, so this one may use every core.
        """
        session = self._solo_session if solo and self._solo_session is not None else self.session
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        counts = [0] * len(texts)
        truncated = [False] * len(texts)
        for run, batch in self._batches(self.encoder.tokenize(texts)):
            vectors[run] = self._run(session, batch.inputs(self.input_names))
            for row, i in enumerate(run):
                counts[i] = batch.token_counts[row]
                truncated[i] = batch.truncated[row]
        return Embeddings(vectors, counts, truncated)

    def _batches(self, encodings: Sequence[Encoding]) -> Iterator[tuple[list[int], EncodedBatch]]:
        """(indices, padded batch) of each model run, similar lengths together (`plan_runs`)."""
        for run in plan_runs([len(e.ids) for e in encodings]):
            yield run, self.encoder.pack([encodings[i] for i in run])

    def _run(self, session: ort.InferenceSession, feed: dict[str, Any]) -> FloatMatrix:
        out = session.run([self.output_name], feed)[0]
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise EngineError(f"model returned shape {out.shape}, the manifest says dim {self.dim}")
        return np.asarray(out, dtype=np.float32)

    # ------------------------------------------------------------------------------------- session
    def _session_options(self, options: EngineOptions, threads: int = 0) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or self.intra_op_threads
        opts.inter_op_num_threads = options.inter_op_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
        opts.log_severity_level = 3
        return opts

    def _provider_options(self, provider: str, max_batch: int) -> dict[str, Any]:
        if provider != TENSORRT:
            return {}
        seq = self.manifest.max_seq_length

        names = _graph_input_names(self.model_dir / MODEL_FILE)

        def shapes(b: int, s: int) -> str:
            return ",".join(f"{name}:{b}x{s}" for name in names)

        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_home() / "trt-engines" / self.manifest.checksum[:12]),
            "trt_fp16_enable": False,
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(max(1, max_batch // 2), min(seq, 64)),
            "trt_profile_max_shapes": shapes(max_batch, seq),
        }

    def _open_session(self, path: Path, options: EngineOptions) -> ort.InferenceSession:
        available = ort.get_available_providers()
        candidates = provider_candidates(options.providers, available)
        problems: list[str] = []
        for chain in candidates:
            try:
                session = ort.InferenceSession(
                    str(path), self._session_options(options),
                    providers=[(p, self._provider_options(p, options.max_batch)) for p in chain],
                )
            except Exception as exc:  # a GPU provider that cannot start: try the next chain
                problems.append(f"{chain[0]}: {exc}")
                continue
            if session.get_providers()[0] != chain[0]:
                problems.append(f"{chain[0]}: onnxruntime fell back to {session.get_providers()[0]}")
                continue
            try:  # a provider can load and still fail on the first run (no usable GPU)
                feed = self.encoder.encode(["warm-up"]).inputs([i.name for i in session.get_inputs()])
                session.run(None, feed)
            except Exception as exc:
                problems.append(f"{chain[0]}: first run failed: {exc}")
                continue
            if problems:
                log.warning("execution providers skipped", extra={"problems": problems})
            return session
        raise EngineError(
            f"no execution provider could run {path}: " + "; ".join(problems)
            + ". If the file is damaged, run `make model` to export it again."
        )


class Judge(Engine):
    """The paraphrase judge (a cross-encoder exported by weir.model.judge_export): text pairs -> scores."""

    KIND = "pair-judge"
    WHAT, SETTING = "paraphrase judge", "WEIR_EMBEDDER_JUDGE_DIR"

    def score(self, pairs: Sequence[tuple[str, str]], both_readings: bool = True) -> npt.NDArray[np.float32]:
        """Per pair, the lower of the judge's two readings (a-b, b-a: it is not symmetric by construction), or
        with `both_readings` false only the reading b-a (one run per pair)."""
        if not both_readings:
            return self._readings([(b, a) for a, b in pairs])
        scores = self._readings([*pairs, *((b, a) for a, b in pairs)])
        return np.minimum(scores[:len(pairs)], scores[len(pairs):])

    def _readings(self, ordered: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """The judge's score of each (first, second) as given."""
        scores = np.empty(len(ordered), dtype=np.float32)
        for run, batch in self._batches(self.encoder.tokenize_pairs(ordered)):
            out = self.session.run([self.output_name], batch.inputs(self.input_names))[0]
            scores[run] = np.asarray(out, dtype=np.float32).reshape(-1)
        return scores


def _graph_input_names(path: Path) -> list[str]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    probe = ort.InferenceSession(str(path), opts, providers=[CPU])
    return [i.name for i in probe.get_inputs()]
