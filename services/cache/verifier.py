"""Verifies a semantic-cache candidate: does the stored question ask the same thing as the query?

Embeddings put "Cancel my order 48213" and "Don't cancel order 48231" close together; serving one's
answer for the other is the failure a semantic cache must never have. Each check below is a small
pure function of two analysed texts returning a `Verdict`; `verify` runs them in order and the first
refusal names the check and why (e.g. ``numbers: 48213 vs 48231``). A text is analysed once (cached),
so a check costs microseconds. Details read "<query side> vs <stored side>".

Checks (conservative: when in doubt, refuse; a refusal only costs one model call):
- numbers: numbers, IDs, amounts, dates and versions must match as multisets.
- negation: the same negation cues (not, no, never, without, n't, ...) on both sides.
- scope: the same quantifiers and ordering words (all/any/only/none, first/last, most/least, ...).
- entities: names and code-like tokens (capitalised words, acronyms, snake_case, file.ext, quoted
  strings) in either text must appear in the other.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

ACCEPTED = "accepted"

# A token: optional currency/hash prefix, word characters joined by in-word punctuation, optional %.
_TOKEN = re.compile(r"[$€£¥#]?\w+(?:[.,:/'+-]\w+)*%?")
_BOUNDARY = re.compile(r"[.!?:;\n]")
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|`([^`]{1,200})`|“([^”]{1,200})”")
_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_PLAIN_NUMBER = re.compile(r"([$€£¥]?)(\d+(?:\.\d+)?)(%?)")
_SPACES = re.compile(r"\s+")

# "one" is left out on purpose: it is far more often a pronoun ("which one") than a count.
_NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
    "million": "1000000", "billion": "1000000000", "dozen": "12",
}

_NEGATIONS = frozenset({
    "not", "no", "never", "without", "nor", "neither", "nothing", "nobody", "nowhere", "cannot",
    "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "cant", "couldnt",
    "shouldnt", "wouldnt", "havent", "hasnt", "hadnt", "mustnt", "neednt", "aint",
})

# Scope words, canonicalised: words that mean the same scope share one name.
_SCOPE = {
    "all": "all", "every": "all", "each": "all", "everything": "all", "everyone": "all",
    "any": "any", "anything": "any", "anyone": "any",
    "only": "only", "solely": "only", "exclusively": "only",
    "none": "none",
    "first": "first", "earliest": "first", "oldest": "first",
    "last": "last", "latest": "last", "newest": "last", "final": "last",
    "most": "most", "max": "most", "maximum": "most", "highest": "most", "largest": "most",
    "biggest": "most",
    "least": "least", "min": "least", "minimum": "least", "lowest": "least", "smallest": "least",
    "fewest": "least",
    "more": "more", "greater": "more", "above": "more", "exceeding": "more",
    "less": "less", "fewer": "less", "below": "less",
    "before": "before", "prior": "before",
    "after": "after",
}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check (or of all of them): accepted, or refused by `check` because `detail`."""

    ok: bool
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}" if self.detail else self.check


@dataclass(frozen=True)
class Facts:
    """What the checks look at in one text, computed once per text."""

    normalized: str
    words: frozenset[str]
    numbers: tuple[str, ...]
    negations: tuple[str, ...]
    scope: frozenset[str]
    entities: frozenset[str]
    quoted: tuple[str, ...]


def _fold(token: str) -> str:
    token = token.lower()
    return token[:-2] if token.endswith("'s") else token


def _number(token: str) -> str:
    """Canonical form of a token with a digit: 1,200.50 -> 1200.5, #48213 -> 48213, 3.0% -> 3%."""
    token = _DIGIT_GROUP_COMMA.sub("", token.lower()).lstrip("#")
    m = _PLAIN_NUMBER.fullmatch(token)
    if m is None:
        return token
    prefix, digits, suffix = m.groups()
    if "." in digits:
        try:
            digits = format(Decimal(digits).normalize(), "f")
        except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
            pass
    return f"{prefix}{digits}{suffix}"


def _is_entity(token: str, at_sentence_start: bool) -> bool:
    if any(c.isdigit() for c in token):
        return False  # numbers and IDs are the numbers check's business
    if "_" in token or ("." in token.strip(".")):
        return True  # snake_case, file.ext, dotted.names
    uppers = sum(1 for c in token if c.isupper())
    if uppers >= 2:
        return True  # ACRONYMS, camelCase, McDonald
    return uppers == 1 and token[0].isupper() and len(token) > 1 and not at_sentence_start


@lru_cache(maxsize=16384)
def analyze(text: str) -> Facts:
    """The facts of `text` the checks compare (cached: stored questions recur across lookups)."""
    text = text.replace("’", "'").replace("‘", "'")
    words: set[str] = set()
    numbers: list[str] = []
    negations: list[str] = []
    scope: set[str] = set()
    entities: set[str] = set()
    prev_end = -1
    for m in _TOKEN.finditer(text):
        raw = m.group()
        # Capitalisation says nothing at the start of a sentence (or after a colon or a line break).
        at_start = prev_end < 0 or _BOUNDARY.search(text, prev_end, m.start()) is not None
        prev_end = m.end()
        low = raw.lower()
        words.add(_fold(raw))
        if any(c.isdigit() for c in raw):
            numbers.append(_number(raw))
            continue
        plain = low.replace("'", "")
        if plain in _NUMBER_WORDS:
            numbers.append(_NUMBER_WORDS[plain])
        if plain in _NEGATIONS or low.endswith("n't"):
            negations.append(low)
        canon = _SCOPE.get(low)
        if canon is not None:
            scope.add(canon)
        if _is_entity(raw, at_start):
            entities.add(_fold(raw))
    quoted = tuple(
        next(g for g in m.groups() if g is not None).strip().lower() for m in _QUOTED.finditer(text)
    )
    normalized = _SPACES.sub(" ", text.lower()).strip().rstrip("?.!").strip()
    return Facts(
        normalized=normalized,
        words=frozenset(words),
        numbers=tuple(sorted(numbers)),
        negations=tuple(sorted(negations)),
        scope=frozenset(scope),
        entities=frozenset(entities),
        quoted=quoted,
    )


def _show(items: Sequence[str] | frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(items)) if items else "none"


def check_numbers(query: Facts, stored: Facts) -> Verdict:
    """Numbers, IDs and amounts must match as multisets."""
    if query.numbers == stored.numbers:
        return Verdict(True, "numbers", "")
    q, s = Counter(query.numbers), Counter(stored.numbers)
    return Verdict(False, "numbers", f"{_show(list((q - s).elements()))} vs {_show(list((s - q).elements()))}")


def check_negation(query: Facts, stored: Facts) -> Verdict:
    """Both texts carry the same negation cues (counted: "not ... not" is not "not")."""
    if len(query.negations) == len(stored.negations):
        return Verdict(True, "negation", "")
    return Verdict(False, "negation", f"{_show(query.negations)} vs {_show(stored.negations)}")


def check_scope(query: Facts, stored: Facts) -> Verdict:
    """Quantifiers and ordering words (all/any/only/none, first/last, most/least, before/after) agree."""
    if query.scope == stored.scope:
        return Verdict(True, "scope", "")
    return Verdict(False, "scope", f"{_show(query.scope - stored.scope)} vs {_show(stored.scope - query.scope)}")


def check_entities(query: Facts, stored: Facts) -> Verdict:
    """Names and code-like tokens of either text appear in the other (case-insensitively)."""
    missing_q = {e for e in query.entities if e not in stored.words}
    missing_q |= {q for q in query.quoted if q not in stored.normalized}
    missing_s = {e for e in stored.entities if e not in query.words}
    missing_s |= {q for q in stored.quoted if q not in query.normalized}
    if not missing_q and not missing_s:
        return Verdict(True, "entities", "")
    return Verdict(False, "entities", f"{_show(missing_q)} vs {_show(missing_s)}")


Check = Callable[[Facts, Facts], Verdict]

#: The checks in the order they run; the first refusal wins. Names are the keys of the refusal counters.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("numbers", check_numbers),
    ("negation", check_negation),
    ("scope", check_scope),
    ("entities", check_entities),
)
CHECK_NAMES: tuple[str, ...] = tuple(name for name, _ in CHECKS)


def verify(query: str, stored: str, checks: Sequence[tuple[str, Check]] = CHECKS) -> Verdict:
    """Accepts `stored` as the same question as `query`, or names the first check that refuses it."""
    q, s = analyze(query), analyze(stored)
    if not q.normalized or not s.normalized:
        return Verdict(False, "empty", "no question text")
    if q.normalized == s.normalized:
        return Verdict(True, ACCEPTED, "identical")
    for _, check in checks:
        verdict = check(q, s)
        if not verdict.ok:
            return verdict
    return Verdict(True, ACCEPTED, "passed " + ", ".join(name for name, _ in checks))
