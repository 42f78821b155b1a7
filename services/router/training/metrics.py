"""RouteLLM's routing metrics, computed exactly over every threshold.

A router scores each prompt; the prompts scoring above a threshold go to the strong model, the rest to the
weak one. Sending the top k of n prompts to the strong model answers

    quality(k) = (sum over the top k of strong_correct + sum over the rest of weak_correct) / n

correctly. With q_strong / q_weak the quality of sending everything to one model,

    PGR(k)  = (quality(k) - q_weak) / (q_strong - q_weak)    performance gap recovered
    APGR    = area under PGR against the strong-call share k/n over [0, 1]   (random routing: 0.5)
    CPT(x)  = the smallest strong-call share whose PGR reaches x               (random routing: x)

Tied scores cannot be split by a threshold: the curve gets a point only at the end of each group of equal
scores and is linear in between, which is the expected curve under random tie-breaking. So a constant
score (random routing) gives the straight line from (0, 0) to (1, 1): APGR exactly 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Curve:
    """The routing curve: strong-call share, quality and PGR at every distinct threshold."""

    share: FloatArray
    quality: FloatArray
    pgr: FloatArray
    q_strong: float
    q_weak: float

    @property
    def apgr(self) -> float:
        """Area under PGR(share) over [0, 1] (trapezoids between the curve's points)."""
        return float(np.sum(np.diff(self.share) * (self.pgr[1:] + self.pgr[:-1]) / 2.0))

    def cpt(self, target: float = 0.5) -> float:
        """Smallest strong-call share at which PGR reaches `target` (linear between points); nan if never."""
        reached = np.nonzero(self.pgr >= target)[0]
        if reached.size == 0:
            return float("nan")
        i = int(reached[0])
        if i == 0:
            return float(self.share[0])
        s0, s1, p0, p1 = self.share[i - 1], self.share[i], self.pgr[i - 1], self.pgr[i]
        return float(s0 + (s1 - s0) * (target - p0) / (p1 - p0))

    def at(self, shares: Sequence[float]) -> tuple[FloatArray, FloatArray]:
        """(quality, PGR) at the given strong-call shares, interpolated along the curve."""
        x = np.asarray(shares, dtype=np.float64)
        return np.interp(x, self.share, self.quality), np.interp(x, self.share, self.pgr)


def routing_curve(scores: npt.ArrayLike, strong_correct: npt.ArrayLike, weak_correct: npt.ArrayLike) -> Curve:
    """The curve of routing the highest scores to the strong model (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    n = s.size
    if n == 0 or strong.shape != s.shape or weak.shape != s.shape:
        raise ValueError(f"need equally long non-empty arrays, got {s.shape}, {strong.shape}, {weak.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    q_strong, q_weak = float(strong.mean()), float(weak.mean())
    if q_strong <= q_weak:
        raise ValueError(f"the strong model must beat the weak one (q_strong {q_strong:.4f} <= q_weak {q_weak:.4f})")
    order = np.argsort(-s, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])
    sorted_scores = s[order]
    # Points only where the next score differs (end of a tie group), plus the start.
    ends = np.nonzero(np.diff(sorted_scores) != 0)[0] + 1
    k = np.concatenate([[0], ends, [n]])
    share = k / n
    quality = q_weak + gain[k] / n
    pgr = gain[k] / (n * (q_strong - q_weak))
    return Curve(share, quality, pgr, q_strong, q_weak)


def apgr(scores: npt.ArrayLike, strong_correct: npt.ArrayLike, weak_correct: npt.ArrayLike) -> float:
    return routing_curve(scores, strong_correct, weak_correct).apgr


def cpt(scores: npt.ArrayLike, strong_correct: npt.ArrayLike, weak_correct: npt.ArrayLike,
        target: float = 0.5) -> float:
    return routing_curve(scores, strong_correct, weak_correct).cpt(target)
