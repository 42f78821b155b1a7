"""Whole-subject cross-validation: every prompt is scored by a model that never saw its subject."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Vector = npt.NDArray[np.float64]


def subject_folds(subjects: Sequence[str], k: int = 5, seed: int = 0) -> IntArray:
    """Fold number per row; whole subjects per fold, folds of about equal row counts.

    Subjects are shuffled with `seed`, then taken largest first (stable, so the shuffle breaks size ties)
    and each is put in the fold with the fewest rows so far.
    """
    names = sorted(set(subjects))
    if k < 2 or k > len(names):
        raise ValueError(f"need 2 <= k <= {len(names)} subjects, got k={k}")
    sizes: dict[str, int] = {}
    for s in subjects:
        sizes[s] = sizes.get(s, 0) + 1
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    order.sort(key=lambda s: -sizes[s])
    load = [0] * k
    fold_of: dict[str, int] = {}
    for s in order:
        f = int(np.argmin(load))
        fold_of[s] = f
        load[f] += sizes[s]
    return np.array([fold_of[s] for s in subjects], dtype=np.int64)


def leave_one_subject_out(subjects: Sequence[str]) -> IntArray:
    """One fold per subject."""
    names = sorted(set(subjects))
    index = {s: i for i, s in enumerate(names)}
    return np.array([index[s] for s in subjects], dtype=np.int64)


def out_of_fold(folds: IntArray, fit_score: Callable[[BoolArray, BoolArray], Vector]) -> Vector:
    """Scores of every row from `fit_score(train_mask, test_mask)`, trained without the row's fold."""
    out = np.zeros(folds.shape[0], dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        out[test] = fit_score(~test, test)
    return out
