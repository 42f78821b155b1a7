"""The routing data set and its embeddings (computed with the project's embedder engine, cached on disk).

A row is one prompt answered by both models: `strong_correct` / `weak_correct` say whether each got it
right (see /work/shared/data/routing/README.md). The features are exactly what the router sees at run
time: the embedding of the last user message (here the whole prompt) from the embedder's model, and the
gateway's token estimate (`services.gateway.hub._estimate_tokens`: characters // 4 + 4 per message).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from weir.kit.config import cache_home, default_model_dir

DEFAULT_DATA = Path("/work/shared/data/routing/mmlu_dev.jsonl")

BoolArray = npt.NDArray[np.bool_]
FloatMatrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def data_path() -> Path:
    """$WEIR_ROUTING_DATA or the shared MMLU routing file."""
    return Path(os.environ.get("WEIR_ROUTING_DATA") or DEFAULT_DATA).expanduser()


def estimate_prompt_tokens(text: str, messages: int = 1) -> int:
    """The gateway's prompt-token estimate for `messages` messages of total text `text`."""
    return len(text) // 4 + 4 * messages


@dataclass(frozen=True)
class RoutingData:
    """Rows of the routing set, as parallel arrays."""

    subjects: list[str]
    prompts: list[str]
    strong: BoolArray
    weak: BoolArray
    prompt_tokens: IntArray
    sha256: str

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: npt.NDArray[np.int64]) -> RoutingData:
        return RoutingData(
            [self.subjects[i] for i in rows], [self.prompts[i] for i in rows], self.strong[rows],
            self.weak[rows], self.prompt_tokens[rows], self.sha256,
        )


def load_data(path: Path) -> RoutingData:
    """Reads a routing JSONL file (subject, prompt, strong_correct, weak_correct per line)."""
    raw = path.read_bytes()
    subjects: list[str] = []
    prompts: list[str] = []
    strong: list[bool] = []
    weak: list[bool] = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            subjects.append(str(row["subject"]))
            prompts.append(str(row["prompt"]))
            strong.append(bool(row["strong_correct"]))
            weak.append(bool(row["weak_correct"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a routing row: {exc}") from exc
    if not prompts:
        raise ValueError(f"{path}: no rows")
    return RoutingData(
        subjects, prompts, np.array(strong), np.array(weak),
        np.array([estimate_prompt_tokens(p) for p in prompts], dtype=np.int64),
        hashlib.sha256(raw).hexdigest(),
    )


def scalar_features(prompt_tokens: IntArray, max_tokens: IntArray | None = None) -> FloatMatrix:
    """[ln(1+prompt_tokens), ln(1+max_tokens)] per row, in scorer.SCALAR_FEATURES order."""
    mt = np.zeros_like(prompt_tokens) if max_tokens is None else max_tokens
    return np.stack([np.log1p(prompt_tokens), np.log1p(mt)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Embedded:
    """Embeddings of every prompt of a data set, rows in data order."""

    vectors: FloatMatrix
    model_id: str


def embed_texts(texts: list[str], model_dir: Path, *, progress: bool = False) -> Embedded:
    """Embeds `texts` with the embedder's engine (the same tokenisation, truncation and graph)."""
    from services.embedder.engine import Engine, EngineOptions  # onnxruntime: loaded only when embedding

    engine = Engine(model_dir, EngineOptions(intra_op_threads=min(2, os.cpu_count() or 1)))
    out = np.empty((len(texts), engine.dim), dtype=np.float32)
    chunk = 512
    start = time.monotonic()
    for lo in range(0, len(texts), chunk):
        out[lo:lo + chunk] = engine.embed(texts[lo:lo + chunk]).vectors
        if progress:
            done = min(len(texts), lo + chunk)
            print(f"  embedded {done}/{len(texts)} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return Embedded(out, engine.model_id)


def embed_data(data: RoutingData, model_dir: Path | None = None, *, progress: bool = True) -> Embedded:
    """Embeddings of `data`, from ${WEIR_CACHE_DIR:-~/.cache/weir}/routing/ when computed before.

    The cache file is keyed by the data file's sha256 and the model's checksum, so another export or
    another data file never reuses stale vectors.
    """
    from weir.model.manifest import read_manifest

    model_dir = model_dir or Path(os.environ.get("WEIR_EMBEDDER_MODEL_DIR") or default_model_dir())
    manifest = read_manifest(model_dir, verify_checksum=False)
    cache = cache_home() / "routing" / f"emb-{data.sha256[:16]}-{manifest.checksum[:16]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            vectors = np.asarray(z["vectors"], dtype=np.float32)
            model_id = str(z["model_id"])
        if vectors.shape == (len(data), manifest.dim) and model_id == manifest.model_id:
            return Embedded(vectors, model_id)
    if progress:
        print(f"embedding {len(data)} prompts with {manifest.model_id} (cached in {cache})", file=sys.stderr)
    embedded = embed_texts(data.prompts, model_dir, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, vectors=embedded.vectors, model_id=np.array(embedded.model_id))
    os.replace(tmp, cache)
    return embedded
