"""The strong-vs-weak scorers of virtual models: models over the request's embedding and token counts.

The router never embeds: the gateway sends the embedding of the request's semantic text (computed once,
L2-normalised float32 from the embedder) and the estimated prompt tokens. The scorer turns them into
p(strong) in [0, 1], compared with the virtual model's threshold: for format 1 the estimated probability
that the request needs the strong model, for format 2 a calibrated rank (see the end of this docstring).

Feature vector x, in this order (`SCALAR_FEATURES` names the scalars)::

    x[0 : dim]    the request's sentence embedding
    x[dim + 0]    log_prompt_tokens = ln(1 + prompt_tokens)
    x[dim + 1]    log_max_tokens    = ln(1 + max_tokens)   (0 when the client set no completion budget)

    p(strong) = sigmoid(bias + embedding_weights . x[0:dim] + scalar_weights . x[dim:])

Artefact: an `.npz` file (numpy.savez; read with allow_pickle=False) holding

    format              str          FORMAT ("weir-router-scorer/1")
    embedding_weights   float32[dim]
    scalar_names        str[k]       must equal SCALAR_FEATURES (a file for another feature set is refused)
    scalar_weights      float32[k]
    bias                float64      scalar
    embedding_model_id  str          embedder model the weights were trained on: "name@checksum" = that export
                                     only, "name" = any export of that model ("name@..."; exports are
                                     verified against the reference vectors), "" = any model of this dim
    description         str          free text: how the weights were obtained

The prior (`Scorer.prior`), used until a trained artefact exists, has only one non-zero weight, 1.0 on
log_prompt_tokens, and bias -ln(1 + M) for a midpoint of M prompt tokens, so that

    p(strong) = (1 + t) / ((1 + t) + (1 + M))       t = prompt tokens

e.g. with M = 1000: 100 tokens -> 0.09, 1000 -> 0.50, 10000 -> 0.91. Longer prompts are more likely to
need the strong model; the embedding is ignored. It is an honest, explainable default, not a trained model.

Format 2 ("weir-router-scorer/2", `GainScorer`, written by services/router/training/train.py) holds two
such regressions over the same features, one per model, and ranks requests by the expected quality gain
of the strong model:

    p_s  = sigmoid(bias[0] + embedding_weights[0] . emb + scalar_weights[0] . scalars)   P(strong correct)
    p_w  = sigmoid(bias[1] + embedding_weights[1] . emb + scalar_weights[1] . scalars)   P(weak correct)
    gain = p_s - p_w + gain_scalar_weights . scalars
    p(strong) = calibration(gain)   piecewise linear through (calibration_gain[i], calibration_probability[i]),
                                    clamped to the end values outside the knots

    format                   str           "weir-router-scorer/2"
    head_names               str[2]        ("strong_correct", "weak_correct")
    embedding_weights        float32[2, dim]
    scalar_names             str[k]        must equal SCALAR_FEATURES
    scalar_weights           float32[2, k]
    bias                     float64[2]
    gain_scalar_weights      float32[k]
    calibration_gain         float64[m]    strictly increasing, m >= 2
    calibration_probability  float64[m]    non-decreasing, within [0, 1]
    embedding_model_id       str
    name                     str           short name shown in routing reasons
    description              str
    metadata                 str           JSON: training data, hyper-parameters, cross-validated metrics,
                                           operating point

The calibration is a rank scale, not a probability of correctness. On the training prompts, threshold
0.5 sends the artefact's operating share to the strong model (metadata "operating_point"), and the share
moves linearly from there to 100% as the threshold goes to 0 and to 0% as it goes to 1. So a virtual
model's threshold of 0.5 is the operating point, and the quality bias (which moves the threshold linearly)
moves the strong share linearly between it and the extremes.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from weir.kit.config import ConfigError

FORMAT = "weir-router-scorer/1"
GAIN_FORMAT = "weir-router-scorer/2"
SCALAR_FEATURES: tuple[str, ...] = ("log_prompt_tokens", "log_max_tokens")
GAIN_HEADS: tuple[str, ...] = ("strong_correct", "weak_correct")
_KEYS = ("format", "embedding_weights", "scalar_names", "scalar_weights", "bias", "embedding_model_id",
         "description")
_GAIN_KEYS = (*_KEYS, "head_names", "gain_scalar_weights", "calibration_gain", "calibration_probability", "name",
              "metadata")

FloatArray = npt.NDArray[np.float32]


class ScorerFormatError(ConfigError):
    """A scorer artefact is missing, unreadable or not in the documented format."""


class StrongScorer(Protocol):
    """What the router needs from a scorer (`Scorer` and `GainScorer` both are)."""

    @property
    def name(self) -> str:
        """Short name shown in routing reasons."""

    @property
    def dim(self) -> int:
        """Embedding dimension the scorer takes."""

    @property
    def embedding_model_id(self) -> str:
        """Embedder model the weights were trained on ("" = any model of this dim)."""

    @property
    def description(self) -> str:
        """Free text: how the scorer was obtained."""

    def probability(self, embedding: FloatArray | None, prompt_tokens: int, max_tokens: int) -> float:
        """p(strong) in [0, 1]; NaN when the embedding holds non-finite values."""


def accepts_model(trained_on: str, model_id: str) -> bool:
    """Whether vectors from embedder `model_id` suit a scorer trained on `trained_on` (see embedding_model_id);
    an embedding without a model id is taken on trust."""
    if not trained_on or not model_id or model_id == trained_on:
        return True
    return "@" not in trained_on and model_id.split("@", 1)[0] == trained_on


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Scorer:
    """Logistic regression p(strong | embedding, prompt_tokens, max_tokens); see the module docstring."""

    __slots__ = (
        "_w_max",
        "_w_prompt",
        "bias",
        "description",
        "embedding_model_id",
        "embedding_weights",
        "name",
        "scalar_weights",
    )

    def __init__(
        self,
        embedding_weights: npt.ArrayLike,
        scalar_weights: npt.ArrayLike,
        bias: float,
        embedding_model_id: str = "",
        description: str = "",
        name: str = "logistic",
    ) -> None:
        emb = np.ascontiguousarray(embedding_weights, dtype=np.float32)
        scal = np.ascontiguousarray(scalar_weights, dtype=np.float32)
        if emb.ndim != 1 or emb.size == 0:
            raise ValueError(f"embedding_weights must be a non-empty vector, got shape {emb.shape}")
        if scal.shape != (len(SCALAR_FEATURES),):
            raise ValueError(f"scalar_weights must have shape ({len(SCALAR_FEATURES)},) for "
                             f"{list(SCALAR_FEATURES)}, got {scal.shape}")
        if not (np.isfinite(emb).all() and np.isfinite(scal).all() and math.isfinite(bias)):
            raise ValueError("scorer weights must be finite")
        self.embedding_weights: FloatArray = emb
        self.scalar_weights: FloatArray = scal
        self.bias = float(bias)
        self.embedding_model_id = embedding_model_id
        self.description = description
        self.name = name
        self._w_prompt = float(scal[0])
        self._w_max = float(scal[1])

    @classmethod
    def prior(cls, dim: int, midpoint_tokens: int = 1000) -> Scorer:
        """The untrained default: p(strong) = (1+t)/((1+t)+(1+midpoint)) for t prompt tokens."""
        if dim <= 0 or midpoint_tokens <= 0:
            raise ValueError("prior needs dim > 0 and midpoint_tokens > 0")
        return cls(
            np.zeros(dim, dtype=np.float32),
            np.array([1.0, 0.0], dtype=np.float32),
            -math.log1p(midpoint_tokens),
            description=f"length prior: p(strong) = (1+t)/((1+t)+{midpoint_tokens + 1}), t = prompt tokens",
            name="length prior",
        )

    @property
    def dim(self) -> int:
        return int(self.embedding_weights.shape[0])

    def logit(self, embedding: FloatArray | None, prompt_tokens: int, max_tokens: int) -> float:
        """bias + w.x; `embedding` (float32, length dim) may be None to leave out the embedding term."""
        z = self.bias + self._w_prompt * math.log1p(prompt_tokens) + self._w_max * math.log1p(max_tokens)
        if embedding is not None:
            z += float(np.dot(self.embedding_weights, embedding))
        return z

    def probability(self, embedding: FloatArray | None, prompt_tokens: int, max_tokens: int) -> float:
        """p(strong); NaN when the embedding holds non-finite values (callers check)."""
        z = self.logit(embedding, prompt_tokens, max_tokens)
        return z if math.isnan(z) else sigmoid(z)

    def save(self, path: Path) -> None:
        """Writes the artefact to exactly `path` (atomically: a temporary file, then a rename)."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT),
                embedding_weights=self.embedding_weights,
                scalar_names=np.array(SCALAR_FEATURES),
                scalar_weights=self.scalar_weights,
                bias=np.array(self.bias, dtype=np.float64),
                embedding_model_id=np.array(self.embedding_model_id),
                description=np.array(self.description),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Scorer:
        """Reads an artefact written by `save` (or by a trainer following the documented format)."""
        with _artefact(path, _KEYS, FORMAT) as z:
            return cls(
                z["embedding_weights"],
                z["scalar_weights"],
                float(z["bias"]),
                embedding_model_id=str(z["embedding_model_id"]),
                description=str(z["description"]),
            )


class GainScorer:
    """Two logistic regressions (strong / weak correct) ranked by their gain; see the module docstring."""

    __slots__ = (
        "_b",
        "_calib_gain",
        "_calib_p",
        "_g",
        "_s",
        "bias",
        "calibration_gain",
        "calibration_probability",
        "description",
        "embedding_model_id",
        "embedding_weights",
        "gain_scalar_weights",
        "metadata",
        "name",
        "scalar_weights",
    )

    def __init__(
        self,
        embedding_weights: npt.ArrayLike,
        scalar_weights: npt.ArrayLike,
        bias: npt.ArrayLike,
        gain_scalar_weights: npt.ArrayLike,
        calibration_gain: npt.ArrayLike,
        calibration_probability: npt.ArrayLike,
        *,
        embedding_model_id: str = "",
        name: str = "gain",
        description: str = "",
        metadata: str = "{}",
    ) -> None:
        k = len(SCALAR_FEATURES)
        heads = len(GAIN_HEADS)
        emb = np.ascontiguousarray(embedding_weights, dtype=np.float32)
        scal = np.ascontiguousarray(scalar_weights, dtype=np.float32)
        b = np.ascontiguousarray(bias, dtype=np.float64)
        g = np.ascontiguousarray(gain_scalar_weights, dtype=np.float32)
        cx = np.ascontiguousarray(calibration_gain, dtype=np.float64)
        cp = np.ascontiguousarray(calibration_probability, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != heads or emb.shape[1] == 0:
            raise ValueError(f"embedding_weights must have shape ({heads}, dim), got {emb.shape}")
        if scal.shape != (heads, k) or b.shape != (heads,) or g.shape != (k,):
            raise ValueError(f"scalar_weights, bias and gain_scalar_weights must have shapes ({heads}, {k}), "
                             f"({heads},) and ({k},); got {scal.shape}, {b.shape} and {g.shape}")
        if cx.ndim != 1 or cx.shape != cp.shape or cx.size < 2:
            raise ValueError(f"calibration needs two equally long vectors of >= 2 knots, got {cx.shape}, {cp.shape}")
        arrays = (emb, scal, b, g, cx, cp)
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("scorer weights must be finite")
        if not (np.diff(cx) > 0).all():
            raise ValueError("calibration_gain must be strictly increasing")
        if not ((np.diff(cp) >= 0).all() and cp[0] >= 0.0 and cp[-1] <= 1.0):
            raise ValueError("calibration_probability must be non-decreasing within [0, 1]")
        self.embedding_weights = emb
        self.scalar_weights = scal
        self.bias = b
        self.gain_scalar_weights = g
        self.calibration_gain = cx
        self.calibration_probability = cp
        self.embedding_model_id = embedding_model_id
        self.name = name
        self.description = description
        self.metadata = metadata
        # Plain Python copies: the per-request arithmetic on a handful of numbers is faster without numpy.
        self._s = [[float(v) for v in row] for row in scal]
        self._b = [float(v) for v in b]
        self._g = [float(v) for v in g]
        self._calib_gain = [float(v) for v in cx]
        self._calib_p = [float(v) for v in cp]

    @property
    def dim(self) -> int:
        return int(self.embedding_weights.shape[1])

    def gain(self, embedding: FloatArray | None, prompt_tokens: int, max_tokens: int) -> float:
        """p_s - p_w + gain_scalar_weights . scalars (the embedding term is left out when None)."""
        lp, lm = math.log1p(prompt_tokens), math.log1p(max_tokens)
        (s0, s1), (w0, w1) = self._s
        zs = self._b[0] + s0 * lp + s1 * lm
        zw = self._b[1] + w0 * lp + w1 * lm
        if embedding is not None:
            dots = self.embedding_weights @ embedding
            zs += float(dots[0])
            zw += float(dots[1])
        if math.isnan(zs) or math.isnan(zw):
            return math.nan
        return sigmoid(zs) - sigmoid(zw) + self._g[0] * lp + self._g[1] * lm

    def calibrate(self, gain: float) -> float:
        """The piecewise-linear calibration of a gain (NaN stays NaN)."""
        if math.isnan(gain):
            return gain
        xs, ps = self._calib_gain, self._calib_p
        i = bisect.bisect_right(xs, gain)
        if i == 0:
            return ps[0]
        if i == len(xs):
            return ps[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ps[i - 1] + (ps[i] - ps[i - 1]) * (gain - x0) / (x1 - x0)

    def probability(self, embedding: FloatArray | None, prompt_tokens: int, max_tokens: int) -> float:
        """p(strong) on the calibrated scale; NaN when the embedding holds non-finite values."""
        return self.calibrate(self.gain(embedding, prompt_tokens, max_tokens))

    def save(self, path: Path) -> None:
        """Writes the artefact to exactly `path` (atomically: a temporary file, then a rename)."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(GAIN_FORMAT),
                head_names=np.array(GAIN_HEADS),
                embedding_weights=self.embedding_weights,
                scalar_names=np.array(SCALAR_FEATURES),
                scalar_weights=self.scalar_weights,
                bias=self.bias,
                gain_scalar_weights=self.gain_scalar_weights,
                calibration_gain=self.calibration_gain,
                calibration_probability=self.calibration_probability,
                embedding_model_id=np.array(self.embedding_model_id),
                name=np.array(self.name),
                description=np.array(self.description),
                metadata=np.array(self.metadata),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> GainScorer:
        """Reads a format-2 artefact written by `save`."""
        with _artefact(path, _GAIN_KEYS, GAIN_FORMAT) as z:
            heads = tuple(str(n) for n in z["head_names"])
            if heads != GAIN_HEADS:
                raise ScorerFormatError(f"{path}: heads {list(heads)}, expected {list(GAIN_HEADS)}")
            return cls(
                z["embedding_weights"], z["scalar_weights"], z["bias"], z["gain_scalar_weights"],
                z["calibration_gain"], z["calibration_probability"],
                embedding_model_id=str(z["embedding_model_id"]), name=str(z["name"]),
                description=str(z["description"]), metadata=str(z["metadata"]),
            )


@contextlib.contextmanager
def _artefact(path: Path, keys: tuple[str, ...] = (), expected_format: str = "") -> Iterator[Any]:
    """The artefact's arrays, once it holds `keys`, is of `expected_format` and names the scalar features this
    router computes (each checked when given); any failure to read it, in here or in the block, is a
    ScorerFormatError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ScorerFormatError(f"{path}: not a router scorer, missing {missing}")
            if expected_format:
                fmt = str(z["format"])
                if fmt != expected_format:
                    raise ScorerFormatError(f"{path}: format {fmt!r}, expected {expected_format!r}")
                names = tuple(str(n) for n in z["scalar_names"])
                if names != SCALAR_FEATURES:
                    raise ScorerFormatError(
                        f"{path}: scalar features {list(names)}, this router computes {list(SCALAR_FEATURES)}")
            yield z
    except FileNotFoundError as exc:
        raise ScorerFormatError(f"scorer artefact {path} does not exist") from exc
    except ScorerFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise ScorerFormatError(f"{path}: cannot read scorer artefact: {exc}") from exc


def load_scorer(path: Path) -> Scorer | GainScorer:
    """Reads a scorer artefact of either format (1: `Scorer`, 2: `GainScorer`)."""
    with _artefact(path) as z:
        fmt = str(z["format"]) if "format" in z.files else ""
    if fmt == GAIN_FORMAT:
        return GainScorer.load(path)
    return Scorer.load(path)  # format 1, or the error naming what is wrong
