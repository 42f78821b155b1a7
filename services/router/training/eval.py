"""Held-out-subject evaluation of routing scorers (RouteLLM's APGR / CPT and the quality curve).

    .venv/bin/python -m services.router.training.eval [--scorer services/router/artifacts/scorer.npz] [--loso]

Every method is fitted on some subjects and scored on the others (5 folds of whole subjects, repeated with
3 shuffles as in train.py; `--loso` adds leave-one-subject-out for the shipped recipe). Methods:

- random: a constant score (the expected curve of random routing, APGR 0.5 exactly);
- length prior: the router's fallback, p(strong) rising with prompt tokens;
- gain (shipped recipe): the hyper-parameters stored in the artefact's metadata;
- ablations: the gain model without its length term, and single-label logistic regressions ("need" =
  strong right and weak wrong; "weak_wrong");
- the gain recipe again, each fold's scores on its own training quantiles before pooling
  (`train.cv_shipped_scale`): what a deployed router thresholds, where the raw pooled scores also rank the
  five models' offsets against each other.

Finally the shipped artefact itself is scored on the rows train.py held out (random rows of subjects it
was trained on) and its threshold 0.5 is checked against the strong-call share it promises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.router.scorer import GainScorer, load_scorer
from services.router.settings import SHIPPED_SCORER
from services.router.training.metrics import Curve, routing_curve
from services.router.training.models import fit_single, label, sigmoid
from services.router.training.train import CV_FOLDS, CV_SEEDS, cv_expected_gain, cv_shipped_scale, training_set
from services.router.training.validation import leave_one_subject_out, out_of_fold, subject_folds

Vector = npt.NDArray[np.float64]
SHARES = tuple(i / 10 for i in range(11))


def recipe(scorer_path: Path) -> tuple[float, float]:
    """(lam, length_weight) from a format-2 artefact's metadata."""
    scorer = load_scorer(scorer_path)
    if not isinstance(scorer, GainScorer):
        raise SystemExit(f"{scorer_path} is not a gain scorer (format 2); pass --lam and --length-weight")
    hp = json.loads(scorer.metadata)["hyper_parameters"]
    return float(hp["lam"]), float(hp["length_weight"])


def summary(name: str, curves: list[Curve]) -> str:
    apgr = np.array([c.apgr for c in curves])
    cpt50 = np.array([c.cpt(0.5) for c in curves])
    cpt80 = np.array([c.cpt(0.8) for c in curves])
    spread = f" ± {apgr.std():.3f}" if len(curves) > 1 else "        "
    return f"  {name:<34} {apgr.mean():.3f}{spread}   {cpt50.mean():6.1%}    {cpt80.mean():6.1%}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="routing JSONL (as train.py)")
    parser.add_argument("--model-dir", type=Path, default=None, help="exported embedding model directory")
    parser.add_argument("--scorer", type=Path, default=SHIPPED_SCORER, help="artefact whose recipe to evaluate")
    parser.add_argument("--lam", type=float, default=None, help="override the artefact's L2 strength")
    parser.add_argument("--length-weight", type=float, default=None, help="override the artefact's length weight")
    parser.add_argument("--loso", action="store_true", help="also leave-one-subject-out for the shipped recipe")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if args.lam is None or args.length_weight is None:
        lam, lw = recipe(args.scorer)
    lam = args.lam if args.lam is not None else lam
    lw = args.length_weight if args.length_weight is not None else lw
    ts = training_set(args.data, args.model_dir)
    data, x, strong, weak = ts.data, ts.x, ts.strong, ts.weak
    log_len = x[:, -1]

    def single(name: str) -> Callable[[npt.NDArray[np.bool_], npt.NDArray[np.bool_]], Vector]:
        y = label(name, strong, weak)
        return lambda tr, te: sigmoid(fit_single(x[tr], y[tr], lam).logit(x[te]))

    methods: dict[str, list[Curve]] = {k: [] for k in (
        "random", "length prior", f"gain (lam={lam:g}, length {lw:g})", "gain without length term",
        "logistic, label need", "logistic, label weak_wrong", "gain, each fold on its own scale")}
    names = list(methods)
    for seed in CV_SEEDS:
        folds = subject_folds(data.subjects, CV_FOLDS, seed)
        gain = cv_expected_gain(x, strong, weak, folds, lam)
        scores = [np.zeros(len(data)), data.prompt_tokens.astype(np.float64), gain + lw * log_len, gain,
                  out_of_fold(folds, single("need")), out_of_fold(folds, single("weak_wrong")),
                  cv_shipped_scale(x, strong, weak, folds, lam, lw)]
        for name, s in zip(names, scores, strict=True):
            methods[name].append(routing_curve(s, strong, weak))
        print(f"  seed {seed} done [{time.monotonic() - started:.0f} s]", file=sys.stderr)

    print(f"Held-out-subject evaluation: {len(data)} prompts, {len(set(data.subjects))} subjects "
          f"({ts.path.name}, {len(ts.held)} rows kept aside), embeddings {ts.embedded.model_id}")
    print(f"q_strong {strong.mean():.4f}, q_weak {weak.mean():.4f}; {CV_FOLDS}-fold whole-subject CV, "
          f"seeds {list(CV_SEEDS)}; APGR of the pooled out-of-fold scores (mean ± sd over seeds)\n")
    print(f"  {'method':<34} {'APGR':<13}   {'CPT(50%)':>8}  {'CPT(80%)':>8}")
    for name in names:
        print(summary(name, methods[name]))
    if args.loso:
        loso = leave_one_subject_out(data.subjects)
        gain = cv_expected_gain(x, strong, weak, loso, lam)
        print(summary("gain, leave-one-subject-out", [routing_curve(gain + lw * log_len, strong, weak)]))
        print(summary("LOSO, each fold on its own scale",
                      [routing_curve(cv_shipped_scale(x, strong, weak, loso, lam, lw), strong, weak)]))

    shown = {"random": names[0], "length prior": names[1], "gain scorer": names[2]}
    print("\nQuality vs strong-call share (held-out subjects, mean over seeds):")
    print("  share  " + "".join(f"{k + ' quality / PGR':>28}" for k in shown))
    curves = {k: [c.at(SHARES) for c in methods[v]] for k, v in shown.items()}
    for i, share in enumerate(SHARES):
        cells = []
        for k in shown:
            q = np.mean([c[0][i] for c in curves[k]])
            p = np.mean([c[1][i] for c in curves[k]])
            cells.append(f"{q:20.4f} / {p:5.3f}")
        print(f"  {share:5.0%}  " + "".join(cells))

    scorer = load_scorer(args.scorer)
    held = ts.full.subset(ts.held)
    vectors = ts.embedded.vectors[ts.held]
    p_held = np.array([scorer.probability(v, int(t), 0) for v, t in zip(vectors, held.prompt_tokens, strict=True)])
    train_vectors = np.delete(ts.embedded.vectors, ts.held, axis=0)
    p_train = np.array([scorer.probability(v, int(t), 0)
                        for v, t in zip(train_vectors, data.prompt_tokens, strict=True)])
    c = routing_curve(p_held, held.strong, held.weak)
    print(f"\nShipped artefact {args.scorer.name} ({scorer.name}, {args.scorer.stat().st_size} bytes):")
    print(f"  on the {len(ts.held)} held-out rows (seen subjects, unseen prompts): APGR {c.apgr:.3f}, "
          f"CPT(50%) {c.cpt(0.5):.1%}")
    print(f"  threshold 0.5 sends {np.mean(p_train >= 0.5):.1%} of the training prompts and "
          f"{np.mean(p_held >= 0.5):.1%} of the held-out rows to the strong model")
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
