"""The strong-vs-weak scorer of virtual models: a logistic regression over the request's embedding.

The router never embeds: the gateway sends the embedding of the request's semantic text (computed once,
L2-normalised float32 from the embedder) and the estimated prompt tokens. The scorer turns them into
p(strong), the estimated probability that the request needs the strong model.

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
    embedding_model_id  str          embedder model id the weights were trained on; "" = any model of this dim
    description         str          free text: how the weights were obtained

The prior (`Scorer.prior`), used until a trained artefact exists, has only one non-zero weight, 1.0 on
log_prompt_tokens, and bias -ln(1 + M) for a midpoint of M prompt tokens, so that

    p(strong) = (1 + t) / ((1 + t) + (1 + M))       t = prompt tokens

e.g. with M = 1000: 100 tokens -> 0.09, 1000 -> 0.50, 10000 -> 0.91. Longer prompts are more likely to
need the strong model; the embedding is ignored. It is an honest, explainable default, not a trained model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from weir.kit.config import ConfigError

FORMAT = "weir-router-scorer/1"
SCALAR_FEATURES: tuple[str, ...] = ("log_prompt_tokens", "log_max_tokens")
_KEYS = ("format", "embedding_weights", "scalar_names", "scalar_weights", "bias", "embedding_model_id",
         "description")

FloatArray = npt.NDArray[np.float32]


class ScorerFormatError(ConfigError):
    """A scorer artefact is missing, unreadable or not in the documented format."""


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
        "scalar_weights",
    )

    def __init__(
        self,
        embedding_weights: npt.ArrayLike,
        scalar_weights: npt.ArrayLike,
        bias: float,
        embedding_model_id: str = "",
        description: str = "",
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
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise ScorerFormatError(f"{path}: not a router scorer, missing {missing}")
                fmt = str(z["format"])
                if fmt != FORMAT:
                    raise ScorerFormatError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
                names = tuple(str(n) for n in z["scalar_names"])
                if names != SCALAR_FEATURES:
                    raise ScorerFormatError(
                        f"{path}: scalar features {list(names)}, this router computes {list(SCALAR_FEATURES)}"
                    )
                return cls(
                    z["embedding_weights"],
                    z["scalar_weights"],
                    float(z["bias"]),
                    embedding_model_id=str(z["embedding_model_id"]),
                    description=str(z["description"]),
                )
        except FileNotFoundError as exc:
            raise ScorerFormatError(f"scorer artefact {path} does not exist") from exc
        except ScorerFormatError:
            raise
        except (OSError, ValueError) as exc:
            raise ScorerFormatError(f"{path}: cannot read scorer artefact: {exc}") from exc
