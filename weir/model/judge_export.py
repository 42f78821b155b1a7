"""Builds the paraphrase judge's ONNX graph: bundled all-MiniLM-L6-v2 + the committed adapter, verified.

Run by `scripts/export-model.sh` inside the export venv, after the embedding model; never imported by a
service. Steps:

1. load the bundled weights as a one-logit BertForSequenceClassification, put the committed adapter
   (`weir/model/judge_adapter.npz`, trained by `weir.model.judge_train`) in and fold it into the weights;
2. export with dynamic batch and sequence axes: input_ids, attention_mask, token_type_ids of a text pair
   ([CLS] a [SEP] b [SEP]) -> `score` [batch], the sigmoid of the logit;
3. verify: check pairs through onnxruntime, tokenised as the embedder does (`TextEncoder.encode_pairs`),
   one padded batch and one pair per run, against torch: any score off by more than 1e-4 refuses the graph;
4. keep onnxruntime's fused BERT graph when it is faster and still verifies;
5. install atomically next to the embedding model, with a manifest naming the adapter's sha256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weir.model import judge_train
from weir.model.export import (
    FUSED,
    PACKAGE,
    ExportError,
    Steps,
    _opset,
    cpu_session,
    export_onnx,
    install_atomically,
    keep_fused_if_better,
)
from weir.model.manifest import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, Manifest, sha256_file
from weir.model.tokenization import TextEncoder

NAME = "weir-judge-minilm-l6"
OUTPUT_NAME = "score"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MAX_SCORE_ERROR = 1e-4

#: Pairs the export is verified on (both orders are run): paraphrases, traps, long, empty-ish, non-English.
CHECK_PAIRS: tuple[tuple[str, str], ...] = (
    ("How do I reset my password?", "forgot my password, how can I change it"),
    ("Cancel my order 48213", "Don't cancel order 48231"),
    ("How do I convert a PDF to Word?", "How do I convert a Word document to PDF?"),
    ("What's the boiling point of water?", "at what temperature does water boil"),
    ("Is it safe to run a marathon without training?", "is it safe to run a marathon after training"),
    ("hi", "hello"),
    ("Wie setze ich mein Passwort zurück?", "How do I reset my password?"),
    ("word " * 100, "word " * 90),
)


def score_torch(tok: Any, model: Any, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True,
                  max_length=judge_train.MAX_PAIR_TOKENS, return_tensors="pt")
        return np.asarray(torch.sigmoid(model(**enc).logits[:, 0]).numpy(), dtype=np.float32)


def score_onnx(session: Any, encoder: TextEncoder, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run([OUTPUT_NAME], encoder.encode_pairs(pairs).inputs(names))[0], dtype=np.float32)


def max_error(session: Any, encoder: TextEncoder, pairs: Sequence[tuple[str, str]], reference: np.ndarray) -> float:
    """Worst |onnx - torch| over one padded batch and one pair per run."""
    batched = score_onnx(session, encoder, pairs)
    single = np.concatenate([score_onnx(session, encoder, [p]) for p in pairs])
    return float(max(np.abs(batched - reference).max(), np.abs(single - reference).max()))


def export(out: Path, adapter: Path = judge_train.ADAPTER, *, optimize: bool = True) -> Manifest:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    steps = Steps(total=5 if optimize else 4)
    source_dir = judge_train.base_model_dir()
    source = f"{PACKAGE}=={importlib.metadata.version(PACKAGE)} + {adapter.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    pairs = [*CHECK_PAIRS, *((b, a) for a, b in CHECK_PAIRS)]
    try:
        with steps.step(f"load the bundled weights and the adapter {adapter}"):
            meta, state = judge_train.read_adapter(adapter)
            tok, model = judge_train.build_model(int(meta["rank"]), float(meta["alpha"]), attn_implementation="eager")
            judge_train.load_state(model, state)
            judge_train.merge(model)
            steps.note(f"adapter rank {meta['rank']}, trained on {meta['pairs']} pairs "
                       f"(held out: {', '.join(meta['held_out']) or 'none'})")
            reference = score_torch(tok, model, pairs)

        class PairScore(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).logits
                return torch.sigmoid(logits[:, 0])

        plain = build / "plain.onnx"
        with steps.step("export to ONNX (dynamic batch and sequence)"):
            exporter = export_onnx(PairScore().eval(), INPUT_NAMES, plain, steps, output_name=OUTPUT_NAME)
            steps.note(f"exporter {exporter}, output {OUTPUT_NAME}")
        shutil.copyfile(source_dir / TOKENIZER_FILE, build / TOKENIZER_FILE)
        encoder = TextEncoder(build / TOKENIZER_FILE, judge_train.MAX_PAIR_TOKENS)
        with steps.step(f"verify against torch (max score error <= {MAX_SCORE_ERROR})"):
            error = max_error(cpu_session(plain), encoder, pairs, reference)
            steps.note(f"max score error {error:.2e}")
            if error > MAX_SCORE_ERROR:
                raise ExportError(f"the exported judge drifts from torch by {error:.2e}")
        chosen, chosen_error, graph_optimization = plain, error, "none"
        if optimize:
            def check(session: Any) -> tuple[bool, str, float]:
                fused_error = max_error(session, encoder, pairs, reference)
                return fused_error <= MAX_SCORE_ERROR, f"max score error {fused_error:.2e}", fused_error

            with steps.step("try onnxruntime's BERT graph fusions (fp32)"):
                kept = keep_fused_if_better(plain, build / "fused.onnx", model.config, encoder, steps, check)
                if kept is not None:
                    chosen, chosen_error, graph_optimization = build / "fused.onnx", kept, FUSED
        with steps.step(f"install into {out}"):
            os.replace(chosen, build / MODEL_FILE)
            for leftover in (plain, build / "fused.onnx"):
                leftover.unlink(missing_ok=True)
            manifest = Manifest(
                name=NAME, dim=1, max_seq_length=judge_train.MAX_PAIR_TOKENS, pooling="cls-classifier",
                normalized=False, source=source, checksum=sha256_file(build / MODEL_FILE),
                opset=_opset(build / MODEL_FILE), min_cosine_vs_reference=round(1.0 - chosen_error, 7),
                exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                graph_optimization=graph_optimization, kind="pair-judge", adapter=sha256_file(adapter),
            )
            (build / MANIFEST_FILE).write_text(manifest.to_json())
            build.chmod(0o755)
            install_atomically(build, out)
        steps.note(f"judge {manifest.model_id} ready in {steps.elapsed:.1f}s")
        return manifest
    finally:
        shutil.rmtree(build, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weir.model.judge_export", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="judge directory to (re)create")
    parser.add_argument("--adapter", type=Path, default=judge_train.ADAPTER)
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxruntime's BERT fusions")
    args = parser.parse_args(argv)
    try:
        export(args.out.expanduser().resolve(), args.adapter, optimize=not args.no_optimize)
    except ExportError as exc:
        print(f"judge export refused: {exc}\nnothing was installed at {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
