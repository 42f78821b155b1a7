"""The exported-model directory layout shared by the exporter and the embedder.

A model directory holds::

    manifest.json    what the model is (see `Manifest`)
    model.onnx       input_ids, attention_mask[, token_type_ids] -> sentence_embedding [batch, dim]
                     (pooling and normalisation happen inside the graph)
    tokenizer.json   a Hugging Face `tokenizers` tokenizer

This module imports only the standard library: the export venv and the service both use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class Manifest:
    """What manifest.json says about an exported model."""

    name: str
    dim: int
    max_seq_length: int
    pooling: str
    normalized: bool
    source: str
    checksum: str
    opset: int
    min_cosine_vs_reference: float
    exported_at: str
    #: How the graph was post-processed after export ("none" or the optimiser used).
    graph_optimization: str = "none"
    #: "embedding" (texts -> sentence_embedding) or "pair-judge" (text pairs -> score; see weir.model.judge_export).
    kind: str = "embedding"
    #: pair-judge: sha256 of the committed adapter the graph was built from (weir/model/judge_adapter.npz).
    adapter: str = ""

    @property
    def model_id(self) -> str:
        """Name plus checksum prefix: vectors of different models (or exports) never mix."""
        return f"{self.name}@{self.checksum[:12]}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


_REQUIRED = {f.name for f in dataclasses.fields(Manifest) if f.default is dataclasses.MISSING}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: Path, *, verify_checksum: bool = True) -> Manifest:
    """Reads and checks `model_dir`/manifest.json; raises ModelDirError saying what is wrong."""
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    for name in (MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"model directory {model_dir} has no {name}")
    try:
        raw: Any = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelDirError(f"{model_dir / MANIFEST_FILE} is not a JSON object")
    missing = sorted(_REQUIRED - raw.keys())
    if missing:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE} lacks {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(Manifest)}
    try:
        manifest = Manifest(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE} is malformed: {exc}") from exc
    if not isinstance(manifest.dim, int) or manifest.dim <= 0:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: dim must be a positive integer")
    if not isinstance(manifest.max_seq_length, int) or manifest.max_seq_length < 2:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: max_seq_length must be an integer >= 2")
    if verify_checksum:
        actual = sha256_file(model_dir / MODEL_FILE)
        if actual != manifest.checksum:
            raise ModelDirError(
                f"{model_dir / MODEL_FILE} has sha256 {actual[:12]}…, the manifest says "
                f"{str(manifest.checksum)[:12]}…: the export is damaged or was changed"
            )
    return manifest
