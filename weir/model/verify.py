"""Checks an exported model's vectors against the reference implementation's (numpy only).

The exporter embeds a fixed set of sentences both ways and refuses to install a model whose vectors
drift: `compare` gives per-sentence cosines, `VerifyResult.passed` applies the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]

#: The lowest cosine similarity to the reference an exported model may have on any check sentence.
MIN_COSINE = 0.999


@dataclass(frozen=True)
class VerifyResult:
    """Per-sentence cosine similarity of candidate vs reference vectors."""

    texts: Sequence[str]
    cosines: npt.NDArray[np.float64]
    threshold: float

    @property
    def min_cosine(self) -> float:
        return float(self.cosines.min())

    @property
    def passed(self) -> bool:
        return bool(self.min_cosine >= self.threshold)

    def worst(self, n: int = 5) -> list[tuple[float, str]]:
        """The `n` lowest cosines with their texts, lowest first."""
        order = np.argsort(self.cosines)[:n]
        return [(float(self.cosines[i]), self.texts[i]) for i in order]

    def describe(self, n: int = 5) -> str:
        lines = [f"min cosine {self.min_cosine:.7f} (threshold {self.threshold}) over {len(self.texts)} texts"]
        for cos, text in self.worst(n):
            shown = text if len(text) <= 80 else text[:77] + "..."
            lines.append(f"  {cos:.7f}  {shown!r}")
        return "\n".join(lines)


def compare(
    texts: Sequence[str], reference: FloatArray, candidate: FloatArray, threshold: float = MIN_COSINE
) -> VerifyResult:
    """Row-wise cosine similarity of two [len(texts), dim] matrices (rows need not be normalised)."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != got.shape or ref.shape[0] != len(texts):
        raise ValueError(
            f"shape mismatch: {len(texts)} texts, reference {ref.shape}, candidate {got.shape}"
        )
    if not np.isfinite(got).all():
        return VerifyResult(texts, np.full(len(texts), -1.0), threshold)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosines = np.einsum("ij,ij->i", ref, got) / np.maximum(norms, 1e-12)
    return VerifyResult(texts, cosines, threshold)
