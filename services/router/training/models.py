"""The trainable scorers, in numpy: L2-regularised logistic regressions fitted by Newton's method.

The shipped recipe is the *gain* model: two logistic regressions on the same standardised features,
p_s = P(strong model correct | x) and p_w = P(weak model correct | x). Routing the top prompts to the
strong model raises quality by the sum of (strong_correct - weak_correct) over them, so the best ranking
is by the expected gain p_s - p_w. A small multiple of ln(1 + prompt_tokens) is added to it: length is
the one signal that carries over to unseen subjects, and whole-subject cross-validation prefers more
of it than the regressions give it on their own.

Single-label alternatives (`LABELS`) are kept for comparison in eval.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]

#: What a single-label logistic regression can be trained to predict (score = its probability):
#: "need" = strong right and weak wrong; "weak_wrong" = the weak model fails.
LABELS = ("need", "weak_wrong")


def sigmoid(z: Vector) -> Vector:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def fit_logistic(x: Matrix, y: Vector, lam: float, *, max_iter: int = 50, tol: float = 1e-7) -> tuple[Vector, float]:
    """Minimises sum of log-losses + lam/2 * |w|^2 (the bias is not penalised); returns (w, bias)."""
    n, p = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(p + 1)
    penalty = np.full(p + 1, float(lam))
    penalty[-1] = 0.0
    for _ in range(max_iter):
        prob = sigmoid(xb @ beta)
        grad = xb.T @ (prob - y) + penalty * beta
        hess = (xb * (prob * (1.0 - prob))[:, None]).T @ xb
        hess[np.diag_indices_from(hess)] += penalty + 1e-9
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < tol:
            break
    return beta[:-1].copy(), float(beta[-1])


@dataclass(frozen=True)
class Standardizer:
    """Per-column z-scores learned on training rows (constant columns map to 0)."""

    mean: Vector
    scale: Vector

    @classmethod
    def fit(cls, x: Matrix) -> Standardizer:
        sd = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(sd > 1e-12, sd, 1.0))

    def __call__(self, x: Matrix) -> Matrix:
        return (x - self.mean) / self.scale


@dataclass(frozen=True)
class LinearHead:
    """A logistic regression on raw (unstandardised) features: logit = x . w + b."""

    w: Vector
    b: float

    def logit(self, x: Matrix) -> Vector:
        return np.asarray(x @ self.w + self.b, dtype=np.float64)

    @classmethod
    def fit(cls, x: Matrix, y: Vector, lam: float, std: Standardizer) -> LinearHead:
        """Fits on standardised features and folds the standardisation into the weights."""
        w, b = fit_logistic(std(x), y, lam)
        w_raw = w / std.scale
        return cls(w_raw, b - float(w_raw @ std.mean))


@dataclass(frozen=True)
class GainModel:
    """score = sigmoid(strong.logit) - sigmoid(weak.logit) + length_weight * ln(1 + prompt_tokens)."""

    strong: LinearHead
    weak: LinearHead
    length_weight: float
    lam: float

    @classmethod
    def fit(cls, x: Matrix, strong: Vector, weak: Vector, lam: float, length_weight: float) -> GainModel:
        """`x` = features() rows; `strong` / `weak` = 0/1 correctness labels."""
        std = Standardizer.fit(x)
        return cls(LinearHead.fit(x, strong, lam, std), LinearHead.fit(x, weak, lam, std), length_weight, lam)

    def expected_gain(self, x: Matrix) -> Vector:
        return sigmoid(self.strong.logit(x)) - sigmoid(self.weak.logit(x))

    def score(self, x: Matrix) -> Vector:
        """`x`'s last column must be ln(1 + prompt_tokens) (see features())."""
        return self.expected_gain(x) + self.length_weight * x[:, -1]


def label(name: str, strong: Vector, weak: Vector) -> Vector:
    """The 0/1 target of a single-label model (see LABELS)."""
    if name == "need":
        return strong * (1.0 - weak)
    if name == "weak_wrong":
        return 1.0 - weak
    raise ValueError(f"unknown label {name!r}; known: {', '.join(LABELS)}")


def fit_single(x: Matrix, y: Vector, lam: float) -> LinearHead:
    return LinearHead.fit(x, y, lam, Standardizer.fit(x))


def features(embeddings: npt.NDArray[np.float32], prompt_tokens: npt.NDArray[np.int64]) -> Matrix:
    """Training rows: the embedding, then ln(1 + prompt_tokens) (max_tokens is 0 in the data: left out)."""
    return np.hstack([embeddings.astype(np.float64), np.log1p(prompt_tokens.astype(np.float64))[:, None]])
