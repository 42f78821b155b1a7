"""The scorer artefact format and the length prior."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from services.router.scorer import FORMAT, SCALAR_FEATURES, Scorer, ScorerFormatError, sigmoid


def test_prior_is_a_function_of_prompt_length_only() -> None:
    prior = Scorer.prior(384, midpoint_tokens=1000)
    assert prior.dim == 384
    assert not prior.embedding_weights.any()
    assert prior.probability(None, 1000, 0) == pytest.approx(0.5)
    assert prior.probability(None, 100, 0) == pytest.approx(101 / (101 + 1001))
    assert prior.probability(None, 10_000, 0) == pytest.approx(10_001 / (10_001 + 1001))
    # max_tokens and the embedding carry no weight in the prior.
    emb = np.ones(384, dtype=np.float32)
    assert prior.probability(emb, 100, 4000) == pytest.approx(prior.probability(None, 100, 0))


def test_sigmoid_is_stable_at_the_extremes() -> None:
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(0.0) == 0.5


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    original = Scorer(rng.normal(size=384), [0.7, -0.2], -1.5, embedding_model_id="minilm@abc",
                      description="test weights")
    path = tmp_path / "scorer.npz"
    original.save(path)
    assert path.exists() and not (tmp_path / "scorer.npz.tmp").exists()
    loaded = Scorer.load(path)
    assert loaded.dim == 384
    assert loaded.embedding_model_id == "minilm@abc"
    assert loaded.description == "test weights"
    assert loaded.bias == pytest.approx(-1.5)
    np.testing.assert_array_equal(loaded.embedding_weights, original.embedding_weights)
    np.testing.assert_array_equal(loaded.scalar_weights, original.scalar_weights)
    emb = rng.normal(size=384).astype(np.float32)
    assert loaded.probability(emb, 250, 64) == pytest.approx(original.probability(emb, 250, 64))
    expected = sigmoid(-1.5 + 0.7 * math.log1p(250) - 0.2 * math.log1p(64)
                       + float(original.embedding_weights @ emb))
    assert loaded.probability(emb, 250, 64) == pytest.approx(expected, rel=1e-5)


def test_load_refuses_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ScorerFormatError, match="does not exist"):
        Scorer.load(tmp_path / "missing.npz")

    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ScorerFormatError, match="cannot read"):
        Scorer.load(junk)

    partial = tmp_path / "partial.npz"
    with open(partial, "wb") as f:
        np.savez(f, format=np.array(FORMAT), bias=np.array(0.0))
    with pytest.raises(ScorerFormatError, match="missing"):
        Scorer.load(partial)

    other_features = tmp_path / "features.npz"
    with open(other_features, "wb") as f:
        np.savez(
            f, format=np.array(FORMAT), embedding_weights=np.zeros(4, np.float32),
            scalar_names=np.array(["log_prompt_tokens", "n_messages"]), scalar_weights=np.zeros(2, np.float32),
            bias=np.array(0.0), embedding_model_id=np.array(""), description=np.array(""),
        )
    with pytest.raises(ScorerFormatError, match="n_messages"):
        Scorer.load(other_features)

    Scorer(np.zeros(4), np.zeros(len(SCALAR_FEATURES)), 0.0).save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as z:
        fields = {k: z[k] for k in z.files}
    fields["format"] = np.array("weir-router-scorer/99")
    with open(tmp_path / "future.npz", "wb") as f:
        np.savez(f, **fields)
    with pytest.raises(ScorerFormatError, match="weir-router-scorer/99"):
        Scorer.load(tmp_path / "future.npz")


def test_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="scalar_weights"):
        Scorer(np.zeros(8), [1.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        Scorer(np.full(8, np.nan), [0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        Scorer(np.zeros(0), [0.0, 0.0], 0.0)
