"""The router's training code: routing metrics, whole-subject folds, the numpy fits and the format-2 artefact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from services.router.scorer import (
    GAIN_FORMAT,
    GainScorer,
    Scorer,
    ScorerFormatError,
    accepts_model,
    load_scorer,
    sigmoid,
)
from services.router.training.metrics import apgr, cpt, routing_curve
from services.router.training.models import GainModel, Standardizer, features, fit_logistic
from services.router.training.train import build_scorer, calibration, cv_shipped_scale, holdout_rows
from services.router.training.validation import leave_one_subject_out, out_of_fold, subject_folds

# Four prompts: two only the strong model answers, one both answer, one neither.
STRONG = [1, 1, 1, 0]
WEAK = [0, 0, 1, 0]


# ---- metrics -------------------------------------------------------------------------------------------

def test_random_routing_is_the_diagonal() -> None:
    c = routing_curve(np.zeros(4), STRONG, WEAK)
    assert c.apgr == pytest.approx(0.5)
    assert c.cpt(0.5) == pytest.approx(0.5)
    assert c.cpt(0.8) == pytest.approx(0.8)
    assert (c.q_strong, c.q_weak) == (0.75, 0.25)
    np.testing.assert_allclose(c.at([0.0, 0.5, 1.0])[0], [0.25, 0.5, 0.75])


def test_oracle_and_anti_oracle_on_a_hand_made_case() -> None:
    # The oracle puts both strong-only prompts first: PGR 1 at share 0.5, flat after.
    assert apgr([1, 1, 0, 0], STRONG, WEAK) == pytest.approx(0.25 + 0.5)
    assert cpt([1, 1, 0, 0], STRONG, WEAK) == pytest.approx(0.25)
    # Reversed, nothing is recovered until half the prompts go to the strong model.
    assert apgr([0, 0, 1, 1], STRONG, WEAK) == pytest.approx(0.25)
    assert cpt([0, 0, 1, 1], STRONG, WEAK) == pytest.approx(0.75)
    # A tie group is a straight line (expected curve of random tie-breaking): points (0,0), (.25,.5), (1,1).
    assert apgr([1, 0, 0, 0], STRONG, WEAK) == pytest.approx(0.25 * 0.5 / 2 + 0.75 * 1.5 / 2)


def test_oracle_apgr_matches_its_closed_form() -> None:
    rng = np.random.default_rng(3)
    strong = rng.random(5000) < 0.8
    weak = rng.random(5000) < 0.65
    f = float(np.mean(strong & ~weak))  # strong-only share: the oracle sends these first
    g = float(np.mean(weak & ~strong))  # weak-only share: the oracle sends these last
    peak = f / (f - g)  # PGR after the strong-only prompts (> 1: the oracle beats always-strong)
    expected = f * peak / 2 + peak * (1 - f - g) + g * (peak + 1) / 2
    oracle = strong.astype(float) - weak.astype(float)
    c = routing_curve(oracle, strong, weak)
    assert c.apgr == pytest.approx(expected)
    assert c.cpt(0.5) == pytest.approx(0.5 / peak * f)
    assert float(c.pgr.max()) == pytest.approx(peak)
    # A random permutation as scores lands near 0.5.
    assert apgr(rng.permutation(5000), strong, weak) == pytest.approx(0.5, abs=0.05)


def test_metrics_refuse_unusable_input() -> None:
    with pytest.raises(ValueError, match="must beat"):
        routing_curve([0.1, 0.2], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        routing_curve([0.1, math.nan], [1, 1], [0, 1])
    with pytest.raises(ValueError, match="equally long"):
        routing_curve([0.1], [1, 1], [0, 1])
    assert math.isnan(cpt([0, 0, 1, 1], STRONG, WEAK, target=2.0))


# ---- folds ---------------------------------------------------------------------------------------------

def test_subject_folds_keep_subjects_whole_and_balance_rows() -> None:
    rng = np.random.default_rng(0)
    subjects = [f"s{int(i)}" for i in rng.integers(0, 20, size=2000)]
    folds = subject_folds(subjects, k=5, seed=1)
    for s in set(subjects):
        assert len({int(f) for f, t in zip(folds, subjects, strict=True) if t == s}) == 1
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.6 * counts.max()
    np.testing.assert_array_equal(folds, subject_folds(subjects, k=5, seed=1))
    assert not np.array_equal(folds, subject_folds(subjects, k=5, seed=2))
    assert len(set(leave_one_subject_out(subjects).tolist())) == 20
    with pytest.raises(ValueError):
        subject_folds(["a", "b"], k=3)


def test_out_of_fold_never_scores_with_the_rows_fold() -> None:
    folds = np.array([0, 0, 1, 1, 2])
    seen: list[tuple[list[int], list[int]]] = []

    def fit_score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        seen.append((np.nonzero(train)[0].tolist(), np.nonzero(test)[0].tolist()))
        return np.full(int(test.sum()), float(folds[test][0]))

    np.testing.assert_array_equal(out_of_fold(folds, fit_score), [0, 0, 1, 1, 2])
    assert seen == [([2, 3, 4], [0, 1]), ([0, 1, 4], [2, 3]), ([0, 1, 2, 3], [4])]


# ---- fits ----------------------------------------------------------------------------------------------

def test_fit_logistic_recovers_known_weights() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20_000, 2))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(x @ [2.0, -1.0] + 0.5)))).astype(float)
    w, b = fit_logistic(x, y, lam=1e-3)
    np.testing.assert_allclose(w, [2.0, -1.0], atol=0.1)
    assert b == pytest.approx(0.5, abs=0.1)
    # A large penalty shrinks the weights toward zero but leaves the bias free.
    w_big, b_big = fit_logistic(x, y, lam=1e6)
    assert np.abs(w_big).max() < 0.05
    assert b_big == pytest.approx(math.log(y.mean() / (1 - y.mean())), abs=0.05)


def _synthetic(n: int = 3000, dim: int = 8, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tokens = rng.integers(20, 2000, size=n).astype(np.int64)
    hard = emb[:, 0] + 0.3 * np.log1p(tokens) / 8
    strong = (rng.random(n) < 0.85 - 0.1 * hard).astype(float)
    weak = (rng.random(n) < 0.7 - 0.4 * hard).astype(float)
    return features(emb, tokens), strong, weak


def test_gain_model_weights_live_on_raw_features() -> None:
    x, strong, weak = _synthetic()
    model = GainModel.fit(x, strong, weak, lam=10.0, length_weight=0.05)
    std = Standardizer.fit(x)
    w, b = fit_logistic(std(x), strong, 10.0)
    np.testing.assert_allclose(model.strong.logit(x), std(x) @ w + b, rtol=1e-9, atol=1e-9)
    assert model.score(x) == pytest.approx(model.expected_gain(x) + 0.05 * x[:, -1])
    # The synthetic gain grows with emb[:, 0]: the model ranks by it.
    assert apgr(model.score(x), strong, weak) > 0.6


def test_shipped_scale_is_each_folds_training_quantile() -> None:
    x, strong, weak = _synthetic()
    folds = np.arange(len(strong)) % 3
    scaled = cv_shipped_scale(x, strong, weak, folds, 10.0, 0.05)
    assert ((scaled >= 0) & (scaled <= 1)).all()
    for f in range(3):  # by hand: the fold's model, the share of its own training scores at or below each score
        train, test = folds != f, folds == f
        model = GainModel.fit(x[train], strong[train], weak[train], 10.0, 0.05)
        seen = model.score(x[train])
        expected = [(seen <= s).mean() for s in model.score(x[test])]
        np.testing.assert_allclose(scaled[test], expected)
    # A monotone map of each fold's scores: within a fold the ranking is the raw score's.
    raw = out_of_fold(folds, lambda tr, te: GainModel.fit(x[tr], strong[tr], weak[tr], 10.0, 0.05).score(x[te]))
    for f in range(3):
        assert (np.diff(scaled[folds == f][np.argsort(raw[folds == f])]) >= 0).all()


def test_calibration_puts_the_operating_point_at_one_half() -> None:
    gains = np.random.default_rng(2).normal(size=10_000)
    xs, ps = calibration(gains, 0.3)
    assert (np.diff(xs) > 0).all() and (np.diff(ps) >= 0).all()
    assert (ps[0], ps[-1]) == (0.0, 1.0)
    p = np.interp(gains, xs, ps)
    assert np.mean(p >= 0.5) == pytest.approx(0.3, abs=0.005)
    assert np.mean(p >= 0.75) == pytest.approx(0.15, abs=0.005)   # linear in the share above 0.5
    assert np.mean(p >= 0.25) == pytest.approx(0.65, abs=0.005)   # and below
    with pytest.raises(ValueError):
        calibration(gains, 1.0)


def test_built_scorer_matches_the_training_math(tmp_path: Path) -> None:
    x, strong, weak = _synthetic()
    model = GainModel.fit(x, strong, weak, lam=10.0, length_weight=0.05)
    scorer = build_scorer(model, x, 0.3, "toy@1", "toy", "synthetic", {"k": 1})
    assert scorer.dim == 8 and scorer.embedding_model_id == "toy@1"
    emb = x[:, :8].astype(np.float32)
    tokens = np.rint(np.expm1(x[:, -1])).astype(int)
    runtime_gain = np.array([scorer.gain(e, int(t), 0) for e, t in zip(emb[:200], tokens[:200], strict=True)])
    np.testing.assert_allclose(runtime_gain, model.score(x[:200]), atol=1e-5)
    probs = np.array([scorer.probability(e, int(t), 0) for e, t in zip(emb, tokens, strict=True)])
    assert ((probs >= 0) & (probs <= 1)).all()
    assert np.mean(probs >= 0.5) == pytest.approx(0.3, abs=0.01)

    path = tmp_path / "gain.npz"
    scorer.save(path)
    loaded = load_scorer(path)
    assert isinstance(loaded, GainScorer)
    assert (loaded.name, loaded.description, loaded.metadata) == ("toy", "synthetic", scorer.metadata)
    want = scorer.probability(emb[7], int(tokens[7]), 64)
    assert loaded.probability(emb[7], int(tokens[7]), 64) == pytest.approx(want)


# ---- format 2 ------------------------------------------------------------------------------------------

def _toy_gain(**overrides: object) -> GainScorer:
    args: dict[str, object] = dict(
        embedding_weights=np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]), scalar_weights=np.zeros((2, 2)),
        bias=[0.0, 0.0], gain_scalar_weights=[0.01, 0.0], calibration_gain=[-1.0, 0.0, 1.0],
        calibration_probability=[0.0, 0.5, 1.0],
    )
    args.update(overrides)
    return GainScorer(**args)  # type: ignore[arg-type]


def test_gain_scorer_arithmetic() -> None:
    scorer = _toy_gain()
    e = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    expected_gain = sigmoid(2.0) - sigmoid(-2.0) + 0.01 * math.log1p(99)
    assert scorer.gain(e, 99, 0) == pytest.approx(expected_gain)
    assert scorer.probability(e, 99, 0) == pytest.approx(0.5 + 0.5 * expected_gain)
    assert scorer.probability(e * 0, 0, 0) == pytest.approx(0.5)
    assert scorer.calibrate(5.0) == 1.0 and scorer.calibrate(-5.0) == 0.0
    assert math.isnan(scorer.probability(np.full(3, np.nan, dtype=np.float32), 10, 0))
    assert scorer.probability(None, 0, 0) == pytest.approx(0.5)


def test_gain_scorer_validates_its_arrays() -> None:
    with pytest.raises(ValueError, match="embedding_weights"):
        _toy_gain(embedding_weights=np.zeros(3))
    with pytest.raises(ValueError, match="shapes"):
        _toy_gain(bias=[0.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        _toy_gain(calibration_gain=[0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        _toy_gain(calibration_probability=[0.0, 0.7, 0.6])
    with pytest.raises(ValueError, match="finite"):
        _toy_gain(gain_scalar_weights=[math.inf, 0.0])


def test_load_scorer_reads_both_formats_and_refuses_others(tmp_path: Path) -> None:
    Scorer(np.zeros(3), [0.5, 0.0], -1.0, description="v1").save(tmp_path / "v1.npz")
    v1 = load_scorer(tmp_path / "v1.npz")
    assert isinstance(v1, Scorer) and v1.description == "v1"
    _toy_gain().save(tmp_path / "v2.npz")
    assert isinstance(load_scorer(tmp_path / "v2.npz"), GainScorer)
    with pytest.raises(ScorerFormatError, match="expected 'weir-router-scorer/1'"):
        Scorer.load(tmp_path / "v2.npz")

    with np.load(tmp_path / "v2.npz") as z:
        fields = {k: z[k] for k in z.files}
    for key, value, match in (("head_names", np.array(["a", "b"]), "heads"),
                              ("scalar_names", np.array(["x", "y"]), "scalar features"),
                              ("calibration_probability", np.array([0.0, 2.0, 3.0]), "non-decreasing")):
        with open(tmp_path / "bad.npz", "wb") as f:
            np.savez(f, **{**fields, key: value})
        with pytest.raises(ScorerFormatError, match=match):
            load_scorer(tmp_path / "bad.npz")
    with open(tmp_path / "partial.npz", "wb") as f:
        np.savez(f, **{k: v for k, v in fields.items() if k != "metadata"})
    with pytest.raises(ScorerFormatError, match="missing"):
        load_scorer(tmp_path / "partial.npz")
    assert str(fields["format"]) == GAIN_FORMAT
    with pytest.raises(ScorerFormatError, match="does not exist"):
        load_scorer(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ScorerFormatError, match="cannot read"):
        load_scorer(tmp_path / "junk.npz")


def test_accepts_model_matches_exports_by_name() -> None:
    assert accepts_model("minilm@abc", "minilm@abc")
    assert not accepts_model("minilm@abc", "minilm@def")
    assert accepts_model("minilm", "minilm@def")
    assert not accepts_model("minilm", "other@def")
    assert not accepts_model("minilm", "minilm-large@def")
    assert accepts_model("", "anything@1") and accepts_model("minilm", "")


def test_holdout_rows_are_fixed() -> None:
    rows = holdout_rows(9963)
    assert rows.size == 300 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, holdout_rows(9963))
