"""The paraphrase judge on splits it never saw: alone, with the verifier, and the cache's policy at other settings.

    ~/.cache/weir/export-venv/bin/python -m services.cache.eval.judge_experiment [--test blind7,blind8,blind9]
                                             [--train SPLITS] [--epochs 4] [--rank 16] [--scores FILE]

Run from the repository root with the export venv (`make model` builds it: torch, transformers and the bundled
all-MiniLM-L6-v2 weights; nothing is downloaded). ~8-10 minutes on the 2-core machine.

The judge is trained exactly as `weir.model.judge_train` trains the committed one (a low-rank adapter on the
bundled MiniLM, a cross-encoder: both questions in one input, a logit out), but on the `--train` splits only
(default: every split not in `--test`), then scores the pairs of the `--test` splits, which it never saw, the
lower of its two readings. Reported on those unseen pairs:

- the judge alone against the similarity-free label (should-hit served / traps served at several thresholds);
- the verifier as it is now, and three ways of combining it with the judge: **or** (the judge may serve a pair
  the verifier refused only by its content check, i.e. every other check passed), **veto** (a pair the
  verifier accepts is served only if the judge does not score it below a low threshold) and **instead of
  content** (every check but the content check must pass, and the judge decides in its place);
- what each check costs and catches among the pairs the judge would serve;
- the cache's policy (services/cache/judge.py) over a grid of hard checks, similarity gates (the cosine of the
  exported embedding model), accept and veto thresholds.

The verifier's own row is flattering: its rules have since been fixed on every split's failures, so its trap
rate there is 0 by construction; its unseen rate is each split's first run (docs/cache.md). The judge's rows
are honest: it never saw these splits. The similarity threshold is not applied (both texts are given).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.cache import verifier
from services.cache.checks import NEVER_OVERRULED
from services.cache.eval import SPLITS
from weir.model import judge_train

EVAL_DIR = Path(__file__).parent


def load_pairs() -> list[dict[str, Any]]:
    """Single-turn pairs with the verifier's verdict now, with and without its content check."""
    without_content = [(n, c) for n, c in verifier.CHECKS if n != "content"]
    rows = []
    for line in (EVAL_DIR / "pairs.jsonl").read_text().splitlines():
        case = json.loads(line)
        q, s = case["query"], case["stored"]
        full = verifier.verify(q, s)
        refused_by = {n for n, c in verifier.CHECKS if not verifier.verify(q, s, [(n, c)]).ok}
        rows.append({**case, "y": int(case["label"] == "should_hit"), "accepted": full.ok,
                     "content_only": not full.ok and verifier.verify(q, s, without_content).ok,
                     "refused_by": refused_by})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", default="blind7,blind8,blind9", help="comma-separated splits to judge")
    parser.add_argument("--train", default="", help="comma-separated splits to train on (default: all others)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16, help="adapter rank (see weir.model.judge_train)")
    parser.add_argument("--scores", type=Path, help="write the judge's score of every unseen pair here (JSON)")
    args = parser.parse_args(argv)
    test = args.test.split(",")
    train_on = args.train.split(",") if args.train else [s for s in SPLITS if s not in test]
    if not set(test) <= set(SPLITS) or not set(train_on) <= set(SPLITS) or set(test) & set(train_on):
        parser.error(f"splits are {', '.join(SPLITS)}; a split is either trained on or judged")
    rows = load_pairs()
    seen = [r for r in rows if r["split"] in train_on]
    unseen = [r for r in rows if r["split"] in test]
    print(f"training on {len(seen)} pairs ({', '.join(train_on)}), judging {len(unseen)} ({', '.join(test)})")
    tok, model = judge_train.train([(r["stored"], r["query"], r["y"]) for r in seen], epochs=args.epochs,
                                   rank=args.rank, log=lambda s: print(s, flush=True))
    # The judge's verdict on a pair is the lower of its two orders (it is not symmetric by construction).
    p = judge_train.scorer(tok, model)([(r["stored"], r["query"]) for r in unseen])
    sim = similarities(unseen)
    if args.scores:
        args.scores.write_text(json.dumps({r["id"]: float(v) for r, v in zip(unseen, p, strict=True)}))
    report(unseen, p, sim)
    return 0


def similarities(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Cosine of the two questions of each row with the exported embedding model (as the cache sees it)."""
    from weir.kit.config import default_model_dir
    from weir.model.export import cpu_session, onnx_embed
    from weir.model.manifest import TOKENIZER_FILE, read_manifest
    from weir.model.tokenization import TextEncoder

    model_dir = default_model_dir()
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, read_manifest(model_dir).max_seq_length)
    session = cpu_session(model_dir / "model.onnx")
    a = np.concatenate([onnx_embed(session, encoder, [r["stored"]]) for r in rows])
    b = np.concatenate([onnx_embed(session, encoder, [r["query"]]) for r in rows])
    return np.asarray((a * b).sum(axis=1))


def report(unseen: Sequence[dict[str, Any]], p: np.ndarray, sim: np.ndarray) -> None:
    """Prints the judge alone, the verifier, and their combinations on the unseen pairs."""
    y = np.array([r["y"] for r in unseen], dtype=bool)
    accepted = np.array([r["accepted"] for r in unseen])
    content_only = np.array([r["content_only"] for r in unseen])

    def line(name: str, served: np.ndarray) -> str:
        return (f"  {name:<56} should-hit {served[y].mean():6.1%} ({served[y].sum():>3} / {y.sum()})   "
                f"traps {served[~y].mean():5.1%} ({served[~y].sum():>2} / {(~y).sum()})")

    print("\nthe judge alone:")
    for t in (0.5, 0.9, 0.98):
        print(line(f"judge >= {t}", p >= t))
    print("\nthe verifier (its rules were fixed on these splits: see the docstring), and with the judge:")
    print(line("verifier", accepted))
    for t in (0.9, 0.98):
        print(line(f"or: content-only refusal and judge >= {t}", accepted | (content_only & (p >= t))))
    for t in (0.02, 0.05, 0.5):
        print(line(f"veto: verifier and judge >= {t}", accepted & (p >= t)))
    for t in (0.5, 0.9, 0.98):
        print(line(f"instead of content: other checks, judge >= {t}", (accepted | content_only) & (p >= t)))
    for r, s in sorted(zip(unseen, p, strict=True), key=lambda rp: -rp[1]):
        if r["content_only"] and not r["y"] and s >= 0.9:
            print(f"  trap the 'or' rule would serve ({s:.3f}, {r['category']}): {r['stored']} || {r['query']}")
    print("\neach check on its own, over the pairs the judge serves at 0.9 (paraphrases it would cost, traps it "
          "would refuse):")
    judged = p >= 0.9
    for name in verifier.CHECK_NAMES:
        refuses = np.array([name in r["refused_by"] for r in unseen])
        print(f"  {name:<10} paraphrases refused {(refuses & judged & y).sum():>3}   "
              f"traps refused {(refuses & judged & ~y).sum():>2}")
    print("\nthe cache's policy (services/cache/judge.py): the hard checks must pass; then a candidate the rules accept"
          "\n(similarity >= 0.70) is served unless the judge scores it below the veto, and one the rules refuse is"
          "\nserved when the judge scores it at least `accept` and its similarity reaches the judge's gate:")
    rules_accept = accepted & (sim >= 0.7)
    for hard in ((), ("numbers",), NEVER_OVERRULED, (*NEVER_OVERRULED, "order")):
        hard_fail = np.array([bool(r["refused_by"] & set(hard)) for r in unseen])
        for gate in (0.5, 0.6, 0.7):
            for accept in (0.5, 0.8, 0.9):
                for veto in (0.0, 0.05):
                    served = (sim >= gate) & ~hard_fail & ((rules_accept & (p >= veto)) | (p >= accept))
                    print(line(f"hard {'+'.join(hard) or '-'}, gate {gate}, accept {accept}, veto {veto}", served))


if __name__ == "__main__":
    raise SystemExit(main())
