"""Text helpers without dependencies (the model export venv imports this module too)."""

from __future__ import annotations


def cut_at_space(text: str, limit: int) -> str:
    """`text` whole when it has at most `limit` characters; else up to the last space before `limit`, so no word
    is split, or its first `limit` characters when there is no such space."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > 0 else limit]
