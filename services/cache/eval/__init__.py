"""The cache's labelled evaluation set (pairs.jsonl, conversations.jsonl) and the commands that run it."""

#: The labelled splits, in the order they were written (README.md here says what each one is).
SPLITS = ("dev", "test", "holdout", *(f"blind{k}" for k in range(2, 16)), "vocab", "vocab2", "vocab3", "vocab4")
