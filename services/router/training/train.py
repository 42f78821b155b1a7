"""Trains the router's scorer for virtual models and writes the artefact the router loads by default.

    .venv/bin/python -m services.router.training.train [--out services/router/artifacts/scorer.npz]

1. Reads the routing data (`--data`, default $WEIR_ROUTING_DATA or the shared MMLU file) and embeds every
   prompt with the embedder's model (cached under ${WEIR_CACHE_DIR:-~/.cache/weir}/routing/).
2. Sets aside a fixed random sample of rows (`--holdout`, written to tests/router/data/ for the test that
   checks the shipped artefact on prompts it never saw) and trains on the rest.
3. Chooses the L2 strength and the length weight of the gain model (models.GainModel) by whole-subject
   cross-validation: 5 folds of whole subjects, repeated with 3 shuffles, mean APGR over the repeats.
4. Fits the chosen model on all training rows, calibrates its gain to the router's 0..1 scale with the
   operating point at 0.5, and saves it (scorer format 2, see services/router/scorer.py).

Deterministic: fixed seeds, closed-form Newton fits, no threads in the arithmetic that change results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.router.scorer import SCALAR_FEATURES, GainScorer
from services.router.settings import SHIPPED_SCORER
from services.router.training.data import Embedded, RoutingData, data_path, embed_data, load_data
from services.router.training.metrics import Curve, routing_curve
from services.router.training.models import GainModel, Matrix, features
from services.router.training.validation import out_of_fold, subject_folds

Vector = npt.NDArray[np.float64]

LAMBDAS = (100.0, 300.0, 1000.0, 3000.0)
LENGTH_WEIGHTS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.12)
CV_SEEDS = (0, 1, 2)
CV_FOLDS = 5
HOLDOUT_ROWS = 300
HOLDOUT_SEED = 20240601
HOLDOUT_SAMPLE = Path(__file__).resolve().parents[3] / "tests" / "router" / "data" / "mmlu_holdout.jsonl"
#: Strong-call shares at which the calibration has a knot.
KNOT_SHARES = np.round(np.linspace(0.0, 1.0, 101), 6)


@dataclass(frozen=True)
class TrainingSet:
    """The data set, its embeddings, the held-out rows and the training rows' features."""

    path: Path
    full: RoutingData
    embedded: Embedded
    held: npt.NDArray[np.int64]
    data: RoutingData
    x: Matrix

    @property
    def strong(self) -> Vector:
        return self.data.strong.astype(np.float64)

    @property
    def weak(self) -> Vector:
        return self.data.weak.astype(np.float64)


def training_set(data_file: Path | None = None, model_dir: Path | None = None) -> TrainingSet:
    """Reads and embeds the routing data and sets the held-out rows aside."""
    path = data_file or data_path()
    full = load_data(path)
    embedded = embed_data(full, model_dir)
    held = holdout_rows(len(full))
    train_rows = np.setdiff1d(np.arange(len(full)), held)
    data = full.subset(train_rows)
    return TrainingSet(path, full, embedded, held, data, features(embedded.vectors[train_rows], data.prompt_tokens))


def holdout_rows(n: int, rows: int = HOLDOUT_ROWS, seed: int = HOLDOUT_SEED) -> npt.NDArray[np.int64]:
    """The fixed rows kept out of training (sorted row numbers)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False)).astype(np.int64)


@dataclass(frozen=True)
class Trial:
    lam: float
    length_weight: float
    apgr: float
    cpt50: float
    curves: tuple[Curve, ...]


def cv_expected_gain(x: Matrix, strong: Vector, weak: Vector, folds: npt.NDArray[np.int64], lam: float) -> Vector:
    """Out-of-fold p_s - p_w of the gain model (the length term is added by the caller)."""
    def fit_score(train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> Vector:
        model = GainModel.fit(x[train], strong[train], weak[train], lam, 0.0)
        return model.expected_gain(x[test])
    return out_of_fold(folds, fit_score)


def cv_shipped_scale(x: Matrix, strong: Vector, weak: Vector, folds: npt.NDArray[np.int64], lam: float,
                     length_weight: float) -> Vector:
    """Out-of-fold scores on the scale a deployed router thresholds: each fold's gain score (length term
    included) mapped to the share of that fold's *training* scores below it, as the artefact's calibration
    knots map a score (`calibration`, a monotone map of the same training quantiles). Pooling raw scores from
    five separately fitted models also ranks the models' offsets against each other, which no deployment
    sees; this pools them as each model would route."""
    log_len = x[:, -1]

    def fit_score(train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> Vector:
        model = GainModel.fit(x[train], strong[train], weak[train], lam, 0.0)
        seen = np.sort(model.expected_gain(x[train]) + length_weight * log_len[train])
        new = model.expected_gain(x[test]) + length_weight * log_len[test]
        return np.searchsorted(seen, new, side="right") / len(seen)
    return out_of_fold(folds, fit_score)


def select(data: RoutingData, x: Matrix, *, log: bool = True) -> list[Trial]:
    """Every (lam, length_weight) with its mean held-out-subject APGR over CV_SEEDS, best first."""
    strong, weak = data.strong.astype(np.float64), data.weak.astype(np.float64)
    log_len = x[:, -1]
    fold_sets = [subject_folds(data.subjects, CV_FOLDS, seed) for seed in CV_SEEDS]
    trials: list[Trial] = []
    for lam in LAMBDAS:
        start = time.monotonic()
        gains = [cv_expected_gain(x, strong, weak, folds, lam) for folds in fold_sets]
        for lw in LENGTH_WEIGHTS:
            curves = tuple(routing_curve(g + lw * log_len, strong, weak) for g in gains)
            trials.append(Trial(lam, lw, float(np.mean([c.apgr for c in curves])),
                                float(np.mean([c.cpt(0.5) for c in curves])), curves))
        if log:
            best = max((t for t in trials if t.lam == lam), key=lambda t: t.apgr)
            print(f"  lam={lam:g}: best APGR {best.apgr:.4f} (length weight {best.length_weight:g}) "
                  f"[{time.monotonic() - start:.0f} s]", file=sys.stderr)
    trials.sort(key=lambda t: -t.apgr)
    return trials


def operating_share(curves: tuple[Curve, ...]) -> tuple[float, float]:
    """The strong-call share at which held-out subjects recover half the quality gap (mean CPT(50%)),
    rounded to 5%, and the mean PGR there: threshold 0.5 = 50% of the gap recovered."""
    share = round(float(np.mean([c.cpt(0.5) for c in curves])) * 20) / 20
    share = min(0.95, max(0.05, share))
    return share, float(np.mean([c.at([share])[1][0] for c in curves]))


def calibration(gains: Vector, share_at_half: float) -> tuple[Vector, Vector]:
    """Knots mapping a gain to the 0..1 scale: the training share scoring at least the gain, s, maps to
    1 - s/2/S for s <= S and (1 - s)/2/(1 - S) beyond (S = share_at_half), so 0.5 sits at the operating
    point and the scale is linear in the strong-call share on either side."""
    if not 0.0 < share_at_half < 1.0:
        raise ValueError(f"the operating share must be inside (0, 1), got {share_at_half}")
    shares = KNOT_SHARES
    xs = np.quantile(gains, 1.0 - shares)  # decreasing in share
    ps = np.where(shares <= share_at_half, 1.0 - 0.5 * shares / share_at_half,
                  0.5 * (1.0 - shares) / (1.0 - share_at_half))
    xs, ps = xs[::-1], ps[::-1]  # increasing gain
    keep = np.concatenate([[True], np.diff(xs) > 1e-12])
    return xs[keep], ps[keep]


def build_scorer(model: GainModel, train_x: Matrix, share_at_half: float, model_id: str, name: str,
                 description: str, metadata: dict[str, object]) -> GainScorer:
    """The format-2 artefact for a fitted gain model (weights are already on raw features)."""
    dim = train_x.shape[1] - 1
    cx, cp = calibration(model.score(train_x), share_at_half)
    # features(): [embedding, ln(1+prompt_tokens)]; ln(1+max_tokens) gets weight 0 (not in the data).
    emb = np.stack([model.strong.w[:dim], model.weak.w[:dim]])
    scal = np.array([[model.strong.w[dim], 0.0], [model.weak.w[dim], 0.0]])
    assert len(SCALAR_FEATURES) == 2
    return GainScorer(
        emb, scal, [model.strong.b, model.weak.b], [model.length_weight, 0.0], cx, cp,
        embedding_model_id=model_id, name=name, description=description,
        metadata=json.dumps(metadata, indent=1, sort_keys=True),
    )


def write_holdout(data_file: Path, rows: npt.NDArray[np.int64], out: Path) -> None:
    lines = [line for line in data_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines[i] + "\n" for i in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="routing JSONL (default: $WEIR_ROUTING_DATA or "
                        "/work/shared/data/routing/mmlu_dev.jsonl)")
    parser.add_argument("--model-dir", type=Path, default=None, help="exported embedding model directory")
    parser.add_argument("--out", type=Path, default=SHIPPED_SCORER, help="artefact to write")
    parser.add_argument("--holdout-out", type=Path, default=HOLDOUT_SAMPLE,
                        help="where to write the held-out sample rows (JSONL)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    ts = training_set(args.data, args.model_dir)
    path, full, embedded, held, data, x = ts.path, ts.full, ts.embedded, ts.held, ts.data, ts.x
    strong, weak = ts.strong, ts.weak
    print(f"training on {len(data)} prompts from {len(set(data.subjects))} subjects "
          f"({len(held)} rows held out); q_strong {strong.mean():.4f}, q_weak {weak.mean():.4f}", file=sys.stderr)

    print(f"whole-subject CV ({CV_FOLDS} folds x seeds {list(CV_SEEDS)}):", file=sys.stderr)
    trials = select(data, x)
    best = trials[0]
    share, pgr_at = operating_share(best.curves)
    print(f"chosen: lam={best.lam:g}, length weight {best.length_weight:g}: held-out-subject APGR "
          f"{best.apgr:.4f}, CPT(50%) {best.cpt50:.4f}; operating point {share:.0%} strong calls "
          f"(held-out PGR {pgr_at:.3f})", file=sys.stderr)

    model = GainModel.fit(x, strong, weak, best.lam, best.length_weight)
    metadata: dict[str, object] = {
        "data": {"file": path.name, "sha256": full.sha256, "rows": len(full), "rows_trained": len(data),
                 "subjects": len(set(data.subjects)), "q_strong": round(float(strong.mean()), 4),
                 "q_weak": round(float(weak.mean()), 4)},
        "holdout": {"rows": len(held), "seed": HOLDOUT_SEED, "note": "random rows kept out of training; "
                    "tests/router/data/mmlu_holdout.jsonl"},
        "embedding_export": embedded.model_id,
        "features": ["embedding", "log_prompt_tokens (gateway estimate: chars // 4 + 4)"],
        "prompt_tokens_estimate": "len(text) // 4 + 4 per message",
        "model": "gain = sigmoid(strong head) - sigmoid(weak head) + length_weight * ln(1 + prompt_tokens)",
        "hyper_parameters": {"lam": best.lam, "length_weight": best.length_weight},
        "cross_validation": {
            "scheme": f"{CV_FOLDS}-fold whole-subject, seeds {list(CV_SEEDS)}, APGR of pooled out-of-fold scores",
            "apgr": round(best.apgr, 4), "cpt50": round(best.cpt50, 4),
            "grid": [{"lam": t.lam, "length_weight": t.length_weight, "apgr": round(t.apgr, 4),
                      "cpt50": round(t.cpt50, 4)} for t in trials],
        },
        "operating_point": {"threshold": 0.5, "strong_share": share, "held_out_pgr": round(pgr_at, 4),
                            "rule": "held-out-subject CPT(50%) rounded to 5%: threshold 0.5 recovers about "
                                    "half the quality gap on MMLU-like traffic"},
    }
    description = (
        f"gain model on {embedded.model_id} embeddings + ln(1+prompt_tokens), trained on {len(data)} MMLU "
        f"prompts ({len(set(data.subjects))} subjects); lam={best.lam:g}, length weight {best.length_weight:g}; "
        f"whole-subject CV APGR {best.apgr:.3f}, CPT(50%) {best.cpt50:.3f}; threshold 0.5 = {share:.0%} strong calls"
    )
    # Any export of the model will do (exports are verified against the reference vectors); the exact
    # export trained on is in the metadata.
    model_name = embedded.model_id.split("@", 1)[0]
    scorer = build_scorer(model, x, share, model_name, "mmlu-gain", description, metadata)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scorer.save(args.out)
    write_holdout(path, held, args.holdout_out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {args.holdout_out} "
          f"in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(description)


if __name__ == "__main__":
    main()
