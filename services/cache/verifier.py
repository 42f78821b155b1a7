"""Verifies a semantic-cache candidate: does the stored question ask the same thing as the query?

Embeddings put "Cancel my order 48213" and "Don't cancel order 48231", or "Convert 5 km to miles" and
"Convert 5 miles to km", close together; serving one's answer for the other is the failure a semantic
cache must never have. A similarity threshold is only the first gate: each check below is a small pure
function of two analysed texts returning a `Verdict`, `verify` runs them in order and the first refusal
names the check and why (e.g. ``numbers: 48231 vs 48213``). Details read "<query side> vs <stored side>".
A text is analysed once (cached), so the checks of a candidate cost microseconds.

Checks, in order (conservative: when in doubt, refuse; a refusal only costs one model call):
- numbers:  numbers, IDs, amounts, versions, ordinals must match as multisets (1,200.50 = 1200.5, five = 5) and
            keep their places (the same words with the numbers elsewhere, or a number that keeps neither of its
            neighbours, is refused; numbers listed with and / or / vs may come in any order).
- units:    units of measure and currencies must match (kg vs lb, °C vs °F, per month vs per week).
- dates:    weekdays, months, seasons, holidays, parts of the day, today/tomorrow, next/last week agree.
- negation: the same number of negation cues (not, never, without, avoid, ...), and no word that is the
            other text's word with a negating prefix (incompatible vs compatible).
- scope:    quantifiers and ordering words agree (all/any/only/some/most, first/last, top/bottom, ...);
            "all"/"any" may be left implicit on one side ("list users" = "list all users").
- intent:   the kind of question agrees (who / when / where / why / how much / how long / how old ...).
- order:    two shared words do not swap sides around a directional word or a shared pivot
            ("km to miles" vs "miles to km", "A beat B" vs "B beat A", "I sue my landlord" vs "my landlord
            sues me": personal pronouns take part by person); units keep their order. A swap of numbers,
            units or dates is refused under that check's name ("numbers: 3.12 than 3.11 vs 3.11 than 3.12"):
            those are the checks the paraphrase judge never overrules.
- entities: names and code-like tokens (capitalised words, acronyms, snake_case, file.ext, quoted text,
            well-known names typed in lower case) of either text appear in the other.
- content:  after stop words, light verbs, inflection, spelling variants, abbreviations, synonyms
            (lexicon.py and synonyms.txt; then WordNet's, wordnet_synonyms.tsv, for each word's most
            frequent sense), derivations, names written as one word or several and typos are accounted
            for, no content word of one text is replaced by another in the other text ("cats" vs "dogs",
            "boil" vs "poach", "enable" vs "disable"; a WordNet antonym always refuses), no verb takes
            another particle ("take off" vs "take on"), and at most one word is only added on one side.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from services.cache import lexicon as lx

ACCEPTED = "accepted"
#: The detail of a verdict on two texts that normalise alike (case, punctuation, spacing).
IDENTICAL = "identical"

#: Content words one side may add that the other lacks ("is [drinking] coffee bad for you").
MAX_ADDED_WORDS = 1

# A token: C++/C#/.NET, a degree sign with its scale, or an optional currency/hash prefix and word
# characters joined by in-word punctuation, with an optional %.
_TOKEN = re.compile(r"c\+\+|c#|\.net\b|°[cf]?|[$€£¥#]?\w+(?:[.,:/'+\-]\w+)*%?", re.IGNORECASE)
_BOUNDARY = re.compile(r"[.!?:;\n]")
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|`([^`]{1,200})`|“([^”]{1,200})”")
_PAREN_SUFFIX = re.compile(r"(\d)\((\w)\)")  # 401(k) -> 401k
_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_NUMBER_WITH_SUFFIX = re.compile(r"([$€£¥]?)(\d+(?:\.\d+)?)(%|[a-zµ°/]+)?")
_ORDINAL = re.compile(r"(st|nd|rd|th)")
# IDs written two ways: one hyphen between a letter run and a digit run (W-2 / W2, F-150 / F150, COVID-19), and
# three or more digit groups joined by -, / or . (50/30/20 / 50-30-20, 12/05/2026 / 12-05-2026; two groups
# stay apart: 1-2 is a range, 1/2 a fraction).
_LETTER_DIGIT_HYPHEN = re.compile(r"[a-z]+-\d+|\d+-[a-z]+")
_DIMENSIONS = re.compile(r"(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)")
_DIGIT_GROUPS = re.compile(r"\d+(?:[-/.]\d+){2,}")
# A number hyphenated to a word is the number and the word: 30-minute = 30 minute, 9-ball = 9 ball, 3-year-old =
# 3 year old (a single letter stays an ID: 3-D = 3D).
_NUMBER_HYPHEN_WORDS = re.compile(r"(?<![\w-])(\d+(?:\.\d+)?)-([a-z]{2,}(?:-[a-z]+)*)\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# A participle negated by "un" (unopened, unused, unauthorized) reads as "not" + the participle; not "under-".
_UN_PARTICIPLE = re.compile(r"un(?!der)[a-z]{2,}ed")
_NOT_UN_PARTICIPLES = frozenset({"united", "unified", "unleaded"})
# "my sister's friend" (owner sister, owned friend); "the friend of my sister" says the same.
_POSSESSIVE = re.compile(r"\b([a-z]+)'s\s+([a-z]+)")
_OF_OWNER = re.compile(r"\b([a-z]+)\s+of\s+(?:my|your|his|her|our|their|the|a|an)\s+([a-z]+)")
_NOT_OWNERS = frozenset({"it", "that", "what", "there", "here", "who", "he", "she", "let", "where", "how", "when",
                         "why", "which", "everyone", "everybody", "nobody", "somebody", "someone", "today"})
_VOWELS = frozenset("aeiou")

_CURRENCY = {"$": "dollar", "€": "euro", "£": "gbp", "¥": "yen"}
# Words before an ambiguous date word ("in may", "this fall", "on sat") that make it a date.
_DATE_CONTEXT = frozenset({"in", "on", "by", "until", "till", "since", "during", "next", "last", "this", "every",
                           "early", "late", "mid", "through", "from", "before", "after", "of"})
# Prepositions that make an ambiguous date word after "the" a date ("in the fall", "during the spring").
_DATE_BEFORE_THE = frozenset({"in", "during", "by", "until", "till", "through", "since"})
# A day of the month after an ambiguous month name: "May 3", "March 21st".
_DAY_OF_MONTH = re.compile(r"(?:[1-9]|[12][0-9]|3[01])(?:st|nd|rd|th)?")
_MONTHS = frozenset({"january", "february", "march", "april", "may", "june", "july", "august", "september",
                     "october", "november", "december"})
# Words before "second" that make it the unit ("a second", "per second"), not the ordinal.
_RATE_CONTEXT = frozenset({"per", "a", "an", "each", "every", "one", "few", "several", "many", "some"})
# Words around a unit word that make it a unit without a number ("convert euros to dollars").
_CONVERSION = frozenset({"to", "into", "in", "from", "per"})
_SYNONYMS: dict[str, str] = {}
_SKIP = lx.STOPWORDS | lx.FILLER


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check (or of all of them): accepted, or refused by `check` because `detail`."""

    ok: bool
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}" if self.detail else self.check


@dataclass(frozen=True, slots=True)
class Facts:
    """What the checks look at in one text, computed once per text."""

    normalized: str
    # Every lower-case form seen (tokens, expansions, parts, joined names), sorted. A tuple, not a frozenset:
    # analyses are kept by the thousand (WEIR_CACHE_VERIFIER_CACHE_TEXTS), and a set of 20 words costs ~1 KiB
    # where a tuple costs ~200 B; the checks only test a few words against it.
    words: tuple[str, ...]
    numbers: tuple[str, ...]
    units: tuple[str, ...]  # in order of appearance
    dates: frozenset[str]
    negations: tuple[str, ...]
    scope: frozenset[str]
    intents: frozenset[str]
    # What kind of question it opens with: "definition" (what is a X), "method" (how do I X), "" otherwise.
    kind: str
    # The modal of a yes/no question: "can" (can / could / may I ...), "should" (should I ...), "" otherwise.
    modal: str
    entities: tuple[str, ...]  # sorted; tuples rather than sets here too: most hold one or two names
    quoted: tuple[frozenset[str], ...]
    content: tuple[str, ...]  # canonical content words (a sorted multiset)
    # 2-3 adjacent words that may be written as one ("null pointer exception"), each as one string: the
    # canonical joined word, then the canonical parts, sorted, space-separated ("nullpointerexcept except
    # null pointer"): one object where a pair of a word and a tuple took three.
    compounds: tuple[str, ...]
    sequence: tuple[str, ...]  # salient tokens and connectors (to, than, & for and/vs, @ for in/of), in order
    particles: frozenset[str]  # verb stem + the particle right after it ("tak off" in "take off my shoes")
    # (owner, owned), canonical: written "X's Y" / written "Y of my X".
    owns: frozenset[tuple[str, str]]
    owns_of: frozenset[tuple[str, str]]
    people: tuple[str, ...]  # the persons named, sorted: <i> for I / me / my ..., canonical role nouns
    referred: frozenset[str]  # role nouns that stand for a person ("the recipient", "my boss's assistant")
    asker: str  # the person a question opened by a modal or an auxiliary is about ("can my landlord ...")
    both_poles: bool  # names both sides of a WordNet opposition ("the pros and cons")


def stem(word: str) -> str:
    """A light, symmetric stemmer: both forms of a word reduce to the same stem (crashing, crashes -> crash)."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses") or word.endswith(("ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    stripped = False
    for suffix in ("ing", "ed"):
        rest = word[: -len(suffix)]
        short_eed = suffix == "ed" and word.endswith("eed") and len(word) <= 5
        if word.endswith(suffix) and len(rest) >= 3 and not short_eed and _VOWELS & set(rest):
            word, stripped = rest, True  # not need/speed/feed, string/spring
            break
    else:
        if word.endswith("ly") and len(word) >= 6:
            word = word[:-2]  # safely -> safe -> saf, like safe
    if word.endswith("e") and len(word) > 3 and not stripped:
        word = word[:-1]  # place/placed -> plac, agree/agreed -> agre
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in _VOWELS and word[-1] not in "ls":
        word = word[:-1]
    return word


# Phrasal verbs are recognised by their stem ("scaling up", "scale up" -> "scal" + "up").
_PHRASAL = frozenset(stem(w) for w in lx.PHRASAL_VERBS)
_LIGHT_PHRASAL = frozenset(stem(w) for w in lx.LIGHT_PHRASAL_VERBS)


def _joined_phrasal(word: str) -> str:
    """A joined phrasal verb of a word list ("shutdown", "freeup") in the form analyze() builds: stem + particle."""
    for particle in lx.PARTICLES:
        verb = word[: -len(particle)]
        if word.endswith(particle) and (verb in lx.PHRASAL_VERBS or verb in lx.LIGHT_PHRASAL_VERBS):
            return stem(verb) + ("in" if particle == "into" else particle)
    return word


for _group in lx.SYNONYM_GROUPS:
    for _w in _group:
        _SYNONYMS.setdefault(stem(_joined_phrasal(_w)), stem(_joined_phrasal(_group[0])))
_SKIP_STEMS = frozenset(stem(w) for w in _SKIP)


#: Words whose canonical form is kept: questions share most of their words, and the form is a pure function of the
#: word (the lexicons are fixed at import). ≈ 2 MiB when full.
CANONICAL_WORDS = 16384


@lru_cache(maxsize=CANONICAL_WORDS)
def canonical(word: str) -> str:
    """The form content words are compared in: spelling, stem and synonym normalised."""
    word = lx.SPELLINGS.get(word, word)
    word = lx.IRREGULAR.get(word, word)
    s = stem(_joined_phrasal(word))  # "cleanup" typed as one word = "clean up"
    return _SYNONYMS.get(s, s)


_ACTIONS = frozenset(canonical(w) for w in lx.ACTIONS)
_INQUIRY = frozenset(stem(w) for w in lx.INQUIRY_VERBS)


def _verb_of(word: str) -> str:
    """The verb of a joined phrasal verb in canonical form ("checkout" -> "check"), else the word."""
    for particle in lx.PARTICLES:
        verb = word[: -len(particle)]
        if word.endswith(particle) and (verb in _PHRASAL or verb in _LIGHT_PHRASAL):
            return verb
    return word


def _wordnet_relations() -> tuple[dict[str, frozenset[str]], frozenset[frozenset[str]]]:
    """WordNet synonyms (canonical word -> canonical words sharing one of its first senses) and antonym
    pairs, from lexicon.WORDNET_SYNSETS / WORDNET_ANTONYMS (services/cache/wordnet_synonyms.tsv).

    The hand-written lists stay authoritative: words of the same group are already one canonical word,
    two words of *different* groups (enable / disable, increase / decrease) or two operations of
    lexicon.ACTIONS (rent / lease, print / publish) are never made synonyms by WordNet, nor a verb and
    itself with a particle (check / check out / check in: the particle rule of check_content decides), and
    a group takes WordNet's synonyms of its first word only (the group "lawsuit, suit" does not inherit
    "fit" from "suit")."""
    hand = frozenset(_SYNONYMS.values())
    apart = hand | _ACTIONS
    links: dict[str, set[str]] = {}
    for synset in lx.WORDNET_SYNSETS:
        forms = sorted({c for w in synset
                        if (c := canonical(w)) not in hand or c == stem(_joined_phrasal(lx.SPELLINGS.get(w, w)))})
        for a in forms:
            for b in forms:
                if a != b and not (a in apart and b in apart) and _verb_of(a) != _verb_of(b):
                    links.setdefault(a, set()).add(b)
    antonyms = frozenset(frozenset((ca, cb)) for a, b in lx.WORDNET_ANTONYMS
                         if (ca := canonical(a)) != (cb := canonical(b)))
    return {a: frozenset(bs) for a, bs in links.items()}, antonyms


_WN_SYNONYMS, _WN_ANTONYMS = _wordnet_relations()
#: Each word's WordNet opposites (the pairs of _WN_ANTONYMS, both ways round).
_WN_OPPOSITES: dict[str, frozenset[str]] = {}
for _pair in _WN_ANTONYMS:
    for _w in _pair:
        _WN_OPPOSITES[_w] = _WN_OPPOSITES.get(_w, frozenset()) | (_pair - {_w})


def _forms(words: Iterable[str], content: Iterable[str]) -> frozenset[str]:
    """The canonical forms of a text's words and its content words (where an opposite is looked for)."""
    return frozenset(canonical(w) for w in words) | frozenset(content)


def _has_both_poles(forms: frozenset[str]) -> bool:
    """Whether a text names both sides of a WordNet opposition ("the pros and cons")."""
    return any(_WN_OPPOSITES.get(w, frozenset()) & forms for w in forms)


def _decimal(digits: str) -> str:
    if "." not in digits:
        return digits  # leading zeros are kept: ticket 00123 is not ticket 123
    try:
        return format(Decimal(digits).normalize(), "f")
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
        return digits


def _number_token(low: str) -> tuple[str | None, list[str], list[str]]:
    """(number, units, dates) of a token holding a digit: $80k -> 80000 + dollar, 5kg -> 5 + kg, 3pm -> 3 + pm."""
    low = _DIGIT_GROUP_COMMA.sub("", low).lstrip("#")
    m = _NUMBER_WITH_SUFFIX.fullmatch(low)
    if m is None:  # an ID or version: INV-2024-001, 6:30, 3.12.1, w-2 (as w2)
        if _LETTER_DIGIT_HYPHEN.fullmatch(low):
            low = low.replace("-", "")
        if _DIGIT_GROUPS.fullmatch(low):
            low = re.sub(r"[-/.]", "-", low)
        return low, [], []
    currency, digits, suffix = m.groups()
    units = [_CURRENCY[currency]] if currency else []
    number = _decimal(digits)
    if suffix == "k":
        if not currency:
            return low, [], []  # 401k is a name, not 401 000
        number, suffix = format(Decimal(number) * 1000, "f"), None
    if suffix:
        if suffix in lx.UNITS:
            units.append(lx.UNITS[suffix])
        elif suffix in ("am", "pm"):
            return number, units, [suffix]
        elif _ORDINAL.fullmatch(suffix):
            number += suffix
        else:
            return low, [], []  # 14a, 2x: an ID
    return number, units, []


def _is_entity(token: str, at_sentence_start: bool) -> bool:
    if any(c.isdigit() for c in token):
        return False  # numbers and IDs are the numbers check's business
    if "_" in token or ("." in token.strip(".")):
        return True  # snake_case, file.ext, dotted.names
    uppers = sum(1 for c in token if c.isupper())
    if uppers >= 2:
        return True  # ACRONYMS, camelCase, McDonald
    return uppers == 1 and token[0].isupper() and len(token) > 1 and not at_sentence_start


def _fold(token: str) -> str:
    token = token.lower()
    return token[:-2] if token.endswith("'s") else token


def _asks_when(toks: Sequence[tuple[str, str, bool]], i: int) -> bool:
    """After "what"/"which" at toks[i-1]: a time noun not modifying another noun ("what time does it open",
    "what's the best time to visit"; not "what is the time complexity")."""
    for k in range(i, min(i + 4, len(toks))):
        if toks[k][0] in lx.WHEN_NOUNS:
            following = toks[k + 1][0] if k + 1 < len(toks) else ""
            return not following or following in lx.STOPWORDS
    return False


_BE = frozenset({"is", "are", "was", "were", "be", "been", "being", "am", "get", "gets", "got", "gotten"})
# The connectors of Facts.sequence (relations, not words): "@" attaches by in/on/of/at, "@~" by for/with/...
_ATTACH = frozenset({"@", "@~"})
_CONNECTORS = lx.DIRECTIONAL | {"&"} | _ATTACH
_PERSON_ROLES = frozenset(lx.PERSONS.values())  # the pronouns of Facts.sequence, as roles: <i>, <he>, ...
_ROLES = frozenset(canonical(w) for w in lx.ROLE_NOUNS)  # people a question can be about, canonical


def _active(sequence: list[str], verb: int, not_agents: set[str]) -> list[str]:
    """ "X is paid by Y" in the active voice, "Y pays X", when the agent is named (the roles the order check
    compares; "is the landlord paid by the tenant" is "does the tenant pay the landlord"). A date or number
    after "by" is a deadline, not an agent ("delivered by Friday")."""
    by = next((k for k in range(verb + 1, len(sequence)) if sequence[k] == "by"), None)
    if by is None:
        return sequence
    start = max((k + 1 for k in range(verb) if sequence[k] in _CONNECTORS), default=0)
    end = next((k for k in range(by + 1, len(sequence)) if sequence[k] in _CONNECTORS), len(sequence))
    subject, agent = sequence[start:verb], sequence[by + 1:end]
    if not subject or not agent or any(t in not_agents for t in agent):
        return sequence
    return sequence[:start] + agent + [sequence[verb]] + subject + sequence[verb + 1:by] + sequence[end:]


_ONCE_CLAUSE = frozenset({"the", "it", "i", "you", "we", "they", "he", "she", "my", "your", "our", "their",
                          "its", "this", "that", "everything", "someone"})
_EXCHANGE = frozenset(stem(w) for w in ("exchange", "swap", "trade", "substitute", "replace"))
_DEFINITION_NEXT = frozenset({"a", "an"})
_EVALUATIVE = frozenset({"good", "best", "better", "great", "nice", "normal", "typical", "common", "reasonable",
                         "realistic", "cheap", "safe", "easy", "quick", "fast", "recommended", "ideal", "right"})
_METHOD_SUBJECTS = frozenset({"i", "we", "you", "one", "someone", "people"})


def _kind(words: Sequence[str]) -> str:
    """"definition" for "what is a X" / "what are X" / "what does X mean" / "define X", "method" for "how do I X"
    / "how to X", "" otherwise (only these two are told apart: "what is X" and "how do I use X" differ)."""
    if not words:
        return ""
    first, second = words[0], words[1] if len(words) > 1 else ""
    third = words[2] if len(words) > 2 else ""
    if first == "define" or (first == "what" and second in ("does", "do") and words[-1] == "mean"):
        return "definition"
    if first == "what" and second in ("is", "are"):
        # "what is a Schlenk line", "what are index funds", "what is preeclampsia" (a name of one or two words)
        named = words[3:] if third in _DEFINITION_NEXT else words[2:] if second == "are" or len(words) <= 4 else []
        if 0 < len(named) <= 3 and third not in lx.DETERMINERS - _DEFINITION_NEXT and not any(
                w in _EVALUATIVE for w in named):
            return "definition"  # "what is a Schlenk line", "what are index funds"; not "what is a good ..."
    if first == "how" and (second == "to" or (second in ("do", "does", "can", "could", "should", "would")
                                              and third in _METHOD_SUBJECTS)):
        verb, link = (third, words[3] if len(words) > 3 else "") if second == "to" else (
            words[3] if len(words) > 3 else "", words[4] if len(words) > 4 else "")
        if verb in ("know", "tell") and link in ("if", "whether", "when"):
            return "check"  # "how do I know if my bottom bracket needs replacing": a diagnosis, not a procedure
        return "method"
    return ""


def _modal(words: Sequence[str]) -> str:
    """The modal a yes/no question opens with: "can" (can / could / may), "should" (should / shall), "whether"
    (does / is / will ...: "does carb loading work"; not "is there a way", "is it possible", "do you know how")."""
    first = words[0] if words else ""
    if first in ("can", "could", "may"):
        return "can"
    if first in ("should", "shall"):
        return "should"
    rest = " ".join(words[1:4])
    if first in _POLAR and not rest.startswith(_POLAR_ASKS_HOW):
        return "whether"
    return ""


_POLAR = frozenset({"do", "does", "did", "is", "are", "am", "was", "were", "will", "would", "has", "have"})
_POLAR_ASKS_HOW = ("there a way", "there any way", "there ways", "it possible", "you know how", "anyone know how",
                   "someone know how")


_PHRASE_VERBS = frozenset({"get", "set", "sign", "log", "carry"})  # verbs that head a fixed phrase


def _heads(word: str) -> tuple[str, ...]:
    """`word`, and its base form when that is a verb heading a fixed phrase ("gets more" / "got more" /
    "getting more" are "get more"; "kinds of" stays apart from the filler "kind of")."""
    forms = [lx.IRREGULAR.get(word, word)]
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")  # carries -> carry
    if word.endswith("s"):
        forms.append(word[:-1])
    if word.endswith("ing"):
        forms += [word[:-3], word[:-4]]  # signing -> sign, getting -> get
    return (word, *(f for f in forms if f != word and f in _PHRASE_VERBS))


def _join_phrases(toks: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    """Replaces fixed phrases ("money back" -> "refund") by their one-word meaning; the phrase's first word
    may be inflected ("gets more" is "get more")."""
    out: list[tuple[str, str, bool]] = []
    i = 0
    while i < len(toks):
        for size in (5, 4, 3, 2):
            if len(toks) - i < size:
                continue
            rest = " ".join(t[0] for t in toks[i + 1:i + size])
            phrase = next((f"{h} {rest}" for h in _heads(toks[i][0]) if f"{h} {rest}" in lx.PHRASES), None)
            if phrase is not None:
                out.extend((w, phrase, toks[i][2]) for w in lx.PHRASES[phrase].split())
                i += size
                break
        else:
            out.append(toks[i])
            i += 1
    return out


#: What a thing is made of, as a question: "what is X made of / from", "what goes into X".
_ASKS_COMPOSITION = re.compile(r"\bwhat(?:'s| is| are)?\b.*\bmade (?:of|from|out of)\b|\bwhat goes into\b")
#: "this spring" is the season as a seasonal question asks it ("is it normal to shed this spring" / "in spring").
_THIS_SEASON = frozenset(f"this {s}" for s in ("spring", "summer", "autumn", "winter"))
#: Verbs that only say a thing goes on when a gerund follows ("keeps losing", "kept crashing").
_ASPECT = frozenset({"keep", "keeps", "kept", "keeping"})
#: Words before "stop" the noun ("the bus stop", "a pit stop"), which negates nothing.
_STOP_NOUN_BEFORE = frozenset({"bus", "pit", "rest", "truck", "tram", "train", "full", "next", "last", "first",
                               "one", "each", "every", "hard", "emergency"})


def _stop_prevents(toks: Sequence[tuple[str, str, bool]], i: int, prev: str) -> bool:
    """Whether "stop" at toks[i-1] means prevent ("stop getting spam calls", "stop my line from twisting",
    "stop double faulting"), not halt ("stop the printer queue", "stop on roller skates") or the noun."""
    if prev in lx.DETERMINERS or prev in _STOP_NOUN_BEFORE:
        return False
    after = [t[0] for t in toks[i:i + 5]]
    return any(w.endswith("ing") for w in after[:3]) or "from" in after


def _inch_marks(text: str) -> str:
    """A double quote right after a digit, where no quotation is open, is an inch mark: a 10" bowl = a 10 inch
    bowl ('the "404" page' keeps its quotation)."""
    if '"' not in text:
        return text
    out: list[str] = []
    quoting = False
    for i, c in enumerate(text):
        if c == '"':
            if not quoting and i > 0 and text[i - 1].isdigit():
                out.append(" inch")
                continue
            quoting = not quoting
        out.append(c)
    return "".join(out)


def _analyze(text: str) -> Facts:
    """The facts of `text` the checks compare (`analyze` caches them: stored questions recur across lookups)."""
    text = _PAREN_SUFFIX.sub(r"\1\2", text.replace("’", "'").replace("‘", "'"))
    text = _NUMBER_HYPHEN_WORDS.sub(lambda m: f"{m.group(1)} {m.group(2).replace('-', ' ')}", _inch_marks(text))
    words: set[str] = set()
    entities: set[str] = set()
    acronyms: set[str] = set()
    raws: list[tuple[str, bool, bool]] = []  # (token, starts a sentence, starts a clause)
    prev_end = -1
    for m in _TOKEN.finditer(text):
        gap = text[max(prev_end, 0):m.start()]
        # Capitalisation says nothing at the start of a sentence (or after a colon or a line break).
        at_start = prev_end < 0 or _BOUNDARY.search(gap) is not None
        raws.append((m.group(), at_start, at_start or "," in gap or "(" in gap))
        prev_end = m.end()
    toks: list[tuple[str, str, bool]] = []  # (word, written form, may open a question)
    # A text in capitals throughout says nothing by its capitals: "HOW DO I RESET MY PASSWORD" names nothing.
    shouting = not any(c.islower() for c in text)
    for k, (raw, at_start, opens) in enumerate(raws):
        low = raw.lower()
        words.add(_fold(raw))
        measured = low in lx.UNITS or low in lx.DATE_WORDS  # the units and dates checks compare those
        if low not in lx.EXPANSIONS and low != "i" and not low.startswith("i'") and not measured \
                and not shouting and _is_entity(raw, at_start):
            entities.add(_fold(raw))
        if not shouting and sum(c.isalpha() for c in raw) >= 2 and raw.upper() == raw and raw.lower() != raw:
            acronyms.add(_fold(raw))
        # A wh-word opens a question when its clause is the sentence's last or an inversion follows
        # ("when is ...", "who should ..."), not in "When traveling to Mexico, do I need ...".
        if opens:
            rest = raws[k + 1:]
            last_clause = not any(o for _, s_, o in rest[: next((j for j, r in enumerate(rest) if r[1]), len(rest))])
            following = rest[0][0].lower() if rest else ""
            opens = last_clause or lx.EXPANSIONS.get(following, following).split()[0] in lx.AUXILIARIES
        # Expand contractions and shorthand, keeping the written cue of a negation for the detail.
        expansion = lx.EXPANSIONS.get(low)
        if expansion is None and low.endswith("n't"):
            expansion = low[:-3] + " not"
        elif expansion is None and _UN_PARTICIPLE.fullmatch(low) and low not in _NOT_UN_PARTICIPLES:
            expansion = "not " + low[2:]  # "unopened pens" = "pens I haven't opened": a cue and the verb
        elif expansion is None:
            low = _fold(low)  # Kindle's -> kindle
        parts = (expansion or low).split()
        if expansion is None and "-" in low and not any(c.isdigit() for c in low):
            parts = [p for p in low.split("-") if p]  # two-factor -> two factor, in-store -> in store
            if len(parts) >= 2 and len(parts[0]) == 1:
                parts = ["".join(parts)]  # e-mail, x-ray, v-if: one word (v-if is not "v" and "if")
            elif len(parts) >= 2 and parts[0] in lx.HYPHEN_NEGATING_PREFIXES:
                parts[:2] = [parts[0] + parts[1]]  # non-deductible -> nondeductible (see check_negation)
            words.add(low.replace("-", ""))
        for j, part in enumerate(parts):
            toks.append((part, low, opens and j == 0))
            words.add(part)
    toks = _join_phrases(toks)

    numbers: list[str] = []
    units: list[str] = []
    dates: set[str] = set()
    negations: list[str] = []
    scope: set[str] = set()
    intents: set[str] = set()
    noun_intents: set[str] = set()  # asked by a noun ("the cost of"): count only when no wh-word asks
    exchanging = False  # an exchange verb was seen: "for" / "with" then relate two things in order
    content: list[str] = []
    sequence: list[str] = []
    particles: set[str] = set()
    n = len(toks)
    i = 0
    prev = ""
    participles: list[int] = []  # where verbs that may be passive ("is X paid by Y") are in `sequence`
    be_seen = False
    while i < n:
        word, written, opens = toks[i]
        nxt = toks[i + 1][0] if i + 1 < n else ""
        after = toks[i + 2][0] if i + 2 < n else ""
        i += 1
        participle = be_seen and (word.endswith(("ed", "en")) or word in lx.IRREGULAR)
        be_seen = be_seen or word in _BE
        if (dims := _DIMENSIONS.fullmatch(word)) is not None:  # "12x24 tile" = "12 by 24 tile"
            numbers.extend(_decimal(g) for g in dims.groups())
            sequence.extend(_decimal(g) for g in dims.groups())
            prev = "#"
            continue
        if any(c.isdigit() for c in word) and word not in lx.DATE_WORDS:
            number, u, d = _number_token(word)
            if number is not None:
                numbers.append(number)
                sequence.append(number)
            units.extend(u)
            sequence.extend(u)
            dates.update(d)
            prev = "#"
            continue
        pair = f"{word} {nxt}"
        if pair in lx.DATE_WORDS:  # two-word dates: new year, black friday
            named = lx.DATE_WORDS[pair]
            i += 1
            if after in ("eve", "day") and named in lx.HOLIDAYS:  # new year's eve / new year's day
                named += " eve" if after == "eve" else ""
                i += 1
            dates.add(named)
            sequence.append(named)
            prev = nxt
            continue
        if word in lx.RELATIVE and nxt in lx.PERIODS:
            relative = f"{lx.RELATIVE[word]} {lx.DATE_WORDS.get(nxt, lx.UNITS.get(nxt, nxt))}"
            if relative in _THIS_SEASON:
                relative = relative[len("this "):]  # "shedding this spring" asks about spring
            dates.add(relative)
            sequence.append(relative)
            i += 1
            prev = nxt
            continue
        if word in lx.NUMBER_WORDS and (word not in lx.AMBIGUOUS_NUMBER_WORDS or prev == "the"):
            numbers.append(lx.NUMBER_WORDS[word])
            sequence.append(lx.NUMBER_WORDS[word])
            prev = "#"
            continue
        unit = lx.UNITS.get(word)
        if word in ("min", "max") and prev != "#":
            unit, word = None, "minimum" if word == "min" else "maximum"  # "min visibility", not minutes
        if word in ("second", "seconds") and (prev == "#" or prev in _RATE_CONTEXT or word == "seconds"
                                              or (i >= 3 and toks[i - 3][0] == "per")):  # "per real second"
            unit = "sec"
        if unit is not None and (word in lx.UNIT_SYMBOLS or unit in lx.TIME_UNITS or prev == "#" or (
                unit not in lx.COUNT_UNITS and (prev in _CONVERSION or nxt in _CONVERSION))):
            prev = word
            if unit == "degree" and nxt in ("celsius", "fahrenheit", "kelvin", "°c", "°f"):
                prev = "#"
                continue  # "degrees Celsius" is the same unit as "°C"
            units.append(unit)
            sequence.append(unit)
            continue
        date = lx.DATE_WORDS.get(word)
        if date is not None and (word not in lx.AMBIGUOUS_DATE_WORDS or prev in _DATE_CONTEXT or prev == "#"
                                 or (prev == "the" and i >= 3 and toks[i - 3][0] in _DATE_BEFORE_THE)
                                 or (date in _MONTHS and _DAY_OF_MONTH.fullmatch(nxt) is not None)):  # "on May 3"
            dates.add(date)
            sequence.append(date)
            prev = word
            continue
        if word in lx.NEGATIONS and (word not in ("stop", "stopping") or _stop_prevents(toks, i, prev)):
            negations.append(written)
            prev = word
            continue
        canon_scope = lx.SCOPE.get(word)
        if word == "once" and (nxt in _ONCE_CLAUSE or (nxt in ("a", "an") and lx.UNITS.get(after) not in
                                                        lx.TIME_UNITS and after not in ("while", "day", "week"))):
            canon_scope = "after"  # "once an offer's accepted" = "after an offer is accepted"; not "once a week"
        if word == "last" and nxt in lx.AFTER_VERB_LAST and prev not in lx.DETERMINERS and prev not in ("at", "#"):
            canon_scope = None  # the verb: "how long does a game last", "will it last in the fridge"
        if word in ("over", "under") and not (any(c.isdigit() for c in nxt) or nxt in lx.NUMBER_WORDS or nxt in lx.SCOPE
                                              or nxt.endswith("ed")  # "over-collected" / "under-collected"
                                              or lx.UNITS.get(after if nxt in ("a", "an") else nxt)):
            canon_scope = None  # a place ("wax over a ceramic coating", "under the sink"), not "over 50", "under a day"
        if canon_scope is not None:
            if canon_scope:
                scope.add(canon_scope)
                sequence.append(canon_scope)
            prev = word
            continue
        asks = opens or prev in lx.QUESTION_OPENERS or i == n  # i == n: a trailing "... on my iphone why"
        if word in lx.INTENT_WORDS and asks:
            intents.add(lx.INTENT_WORDS[word])
        elif word == "how" and nxt in lx.HOW_INTENTS:
            intent = lx.HOW_INTENTS[nxt]
            third = toks[i + 2][0] if i + 2 < n else ""
            if nxt == "many" and after == "times" and third in ("a", "per", "each", "every"):
                intent = "frequency"  # "how many times a day" asks "how often"
            elif nxt == "much" and after == "time":
                intent = "duration"  # "how much time should I set aside" asks "how long"
            elif (nxt == "many" and lx.UNITS.get(after) in lx.TIME_UNITS and third != "of") or (
                    nxt == "far" and after == "ahead"):
                intent = "duration"  # "how many days" / "how far ahead (in advance)" ask "how long"
            intents.add(intent)
            i += 1
            prev = nxt
            continue
        elif word in ("what", "which") and asks and _asks_when(toks, i):
            intents.add("when")
        elif word in ("what", "which") and (skip := _why_verb_after(toks, i)):
            intents.add("why")
            i += skip
            prev = toks[i - 1][0]
            continue
        elif word in lx.INTENT_NOUNS and (prev in lx.DETERMINERS or prev in ("#", "what", "which") or nxt == "of" or (
                i >= 3 and toks[i - 3][0] in lx.DETERMINERS and prev not in _SKIP)):  # "the typical price"
            noun_intents.add(lx.INTENT_NOUNS[word])
        if exchanging and word in ("for", "with"):
            sequence.append("to")  # "exchange a gift card for cash" / "exchange cash for a gift card"
        elif word in lx.DIRECTIONAL and not (word == "to" and prev in lx.INFINITIVE_BEFORE
                                              and nxt not in lx.DETERMINERS):  # "plan to the flat rate"
            sequence.append(word)
        elif word in lx.SYMMETRIC:
            sequence.append("&")
        elif word in lx.ATTACHING:
            sequence.append("@" if word in lx.PLACING else "@~")
        base = stem(lx.IRREGULAR.get(word, word))
        exchanging = exchanging or base in _EXCHANGE
        if base in _INQUIRY and (nxt in lx.EMBEDDED_QUESTION or (nxt == "out" and after in lx.EMBEDDED_QUESTION)):
            prev = word
            continue  # "check which ports are open" = "see which ports are open"
        if nxt in lx.PARTICLES and (base in _PHRASAL or base in _LIGHT_PHRASAL):
            particles.add(f"{base} {'in' if nxt == 'into' else nxt}")
        if nxt in lx.PARTICLES and (base in _PHRASAL or (base in _LIGHT_PHRASAL and after not in lx.DETERMINERS)):
            word = base + ("in" if nxt == "into" else nxt)
            i += 1
        elif word == "used" and prev in lx.BEFORE_SECONDHAND and nxt not in lx.AFTER_USED_VERB:
            word = "secondhand"  # "a used car", "new or used": the adjective, not the light verb
        prev = word
        if word in lx.PERSONS:
            sequence.append(lx.PERSONS[word])  # roles: "can my landlord sue me" / "can I sue my landlord"
        thing = _names_a_thing(word, toks[i - 2][0] if i >= 2 else "", nxt)
        # A filler word written as an acronym of three letters or more names a thing ("convert it to STEP").
        capitals = word in acronyms and len(word) >= 3
        if (word in _SKIP or word in lx.INTENT_WORDS) and not thing and not capitals:
            continue
        if word in _ASPECT and nxt.endswith("ing"):
            continue  # "my pump keeps losing its prime" = "my pump loses its prime": not keep vs lose
        if word in acronyms or word in lx.GAZETTEER:
            content.append(word)  # names are compared as written: HTTPS is not HTTP
            sequence.append(word)
            continue
        parts = [p for p in word.split("-") if p] if "-" in word else [word]
        for part in parts:
            if part in _SKIP and not thing:
                continue
            c = canonical(part)
            if c in _SKIP_STEMS and not thing:
                continue
            content.append(c)
            sequence.append(c)
            if participle:
                participles.append(len(sequence) - 1)
        words.update(parts)
        words.add("".join(parts))
    by = next((k for k, t in enumerate(sequence) if t == "by"), None)
    verb = max((k for k in participles if by is not None and k < by), default=None)
    if verb is not None:
        sequence = _active(sequence, verb, dates | set(numbers) | set(units))

    # Names typed in lower case ("france", "new york" -> "newyork") count as entities.
    plain = [t[0] for t in toks]
    for k, a in enumerate(plain):
        b = plain[k + 1] if k + 1 < len(plain) else ""
        if a in lx.GAZETTEER:
            entities.add(a)
        if b and a + b in lx.GAZETTEER:
            entities.add(a + b)
            words.add(a + b)
    compounds: list[str] = []
    for size in (2, 3):
        for k in range(len(plain) - size + 1):
            span = plain[k:k + size]
            if all(w.isalpha() and w not in _SKIP for w in span):
                joined = "".join(span)
                words.add(joined)
                compounds.append(" ".join((canonical(joined), *sorted(canonical(w) for w in span))))
    quoted = tuple(
        frozenset(w.lower() for w in _TOKEN.findall(next(g for g in m.groups() if g is not None)))
        for m in _QUOTED.finditer(text)
    )
    normalized = _SPACES.sub(" ", text.lower()).strip().rstrip("?.!").strip()
    if _ASKS_COMPOSITION.search(normalized):
        intents.add("composition")  # "what is melt and pour soap made of" is not "how do I make it"
    sequence = _mark_others(sequence)
    spaced = normalized.split()
    people = {p for t in spaced if (p := _person(t))}
    referred = {c for k, t in enumerate(spaced) if k and (c := canonical(t.strip("?,.!"))) in _ROLES
                and (spaced[k - 1] in lx.DETERMINERS or spaced[k - 1].endswith("'s"))}
    return Facts(
        normalized=normalized,
        words=_tuple(sorted(words)),
        numbers=_tuple(sorted(numbers)),
        units=_tuple(units),
        dates=_frozen(dates),
        negations=_tuple(sorted(negations)),
        scope=_frozen(scope),
        intents=_frozen(intents or noun_intents),
        kind=_kind(plain),
        modal=_modal(plain),
        entities=_tuple(sorted(entities)),
        quoted=quoted,
        content=_tuple(sorted(content)),
        compounds=tuple(compounds),
        sequence=_tuple(sequence),
        particles=_frozen(particles),
        owns=_owned_pairs(_POSSESSIVE, normalized, 1, 2, _NOT_OWNERS),
        owns_of=_owned_pairs(_OF_OWNER, normalized, 2, 1),
        people=_tuple(sorted(people)),
        referred=_frozen(referred),
        asker=_asker(normalized.replace(",", " ").split()),
        both_poles=_has_both_poles(_forms(words, content)),
    )


#: Analyses kept by default (WEIR_CACHE_VERIFIER_CACHE_TEXTS): ~5 MiB when full.
ANALYSIS_TEXTS = 4096
analyze = lru_cache(maxsize=ANALYSIS_TEXTS)(_analyze)


def set_analysis_cache(texts: int) -> None:
    """Keeps the analyses of the last `texts` texts (WEIR_CACHE_VERIFIER_CACHE_TEXTS; 0: none)."""
    global analyze
    analyze = lru_cache(maxsize=texts)(_analyze)


# Facts stay in an LRU of thousands of texts: share the empty set and the strings (common words recur).
_EMPTY: frozenset[str] = frozenset()


def _frozen(items: Iterable[str]) -> frozenset[str]:
    out = frozenset(sys.intern(x) for x in items)
    return out if out else _EMPTY


def _tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(sys.intern(x) for x in items)


def _show(items: Iterable[str]) -> str:
    shown = sorted(items)
    return ", ".join(shown) if shown else "none"


def _refuse(check: str, query_side: Iterable[str], stored_side: Iterable[str]) -> Verdict:
    return Verdict(False, check, f"{_show(query_side)} vs {_show(stored_side)}")


def _ok(check: str) -> Verdict:
    return Verdict(True, check, "")


def check_numbers(query: Facts, stored: Facts) -> Verdict:
    """Numbers, IDs and amounts must match as multisets, and keep their places: the same numbers in another order
    are refused where the words around them stay ("subtract 20 from 7" / "subtract 7 from 20", "ticket 16 1" /
    "ticket 1 16") or where a number loses both its neighbours ("38 psi ... at 40" / "40 psi ... at 38"); numbers
    listed with and / or / vs may come in any order ("Cat6 or Cat5e" = "Cat5e or Cat6")."""
    if query.numbers == stored.numbers:
        moved = _numbers_moved(query, stored)
        if moved is None:
            return _ok("numbers")
        around = check_order(query, stored)  # a swap around a pivot reads better: "20 from 7 vs 7 from 20"
        if around.check == "numbers":
            return around
        return Verdict(False, "numbers", f"{', '.join(moved[0])} vs {', '.join(moved[1])}")
    q, s = Counter(query.numbers), Counter(stored.numbers)
    return _refuse("numbers", (q - s).elements(), (s - q).elements())


def _numbers_moved(query: Facts, stored: Facts) -> tuple[list[str], list[str]] | None:
    """The numbers of both texts in their order, where the same numbers changed places; None where they did not
    (or where they only trade places in a list: "16 and 1")."""
    if len(set(query.numbers)) < 2:
        return None
    numbers = set(query.numbers)
    q_at = [i for i, t in enumerate(query.sequence) if t in numbers]
    s_at = [i for i, t in enumerate(stored.sequence) if t in numbers]
    q_order, s_order = [query.sequence[i] for i in q_at], [stored.sequence[i] for i in s_at]
    if q_order == s_order:
        return None
    q_frame = ["#" if t in numbers else t for t in query.sequence]
    s_frame = ["#" if t in numbers else t for t in stored.sequence]
    if q_frame == s_frame:  # the same words, the numbers in other places
        listed = all("&" in q_frame[max(i - 1, 0):i + 2]
                     for i, a, b in zip(q_at, q_order, s_order, strict=True) if a != b)
        return None if listed else (q_order, s_order)

    def neighbours(facts: Facts, at: list[int]) -> dict[str, set[str]]:
        seq = facts.sequence
        out: dict[str, set[str]] = {}
        for i in at:
            out.setdefault(seq[i], set()).update((seq[i - 1] if i else "^", seq[i + 1] if i + 1 < len(seq) else "$"))
        return out

    q_near, s_near = neighbours(query, q_at), neighbours(stored, s_at)
    if any(not (near & s_near.get(n, set())) for n, near in q_near.items()):
        return q_order, s_order
    return None


_RATE = re.compile(r"\b(per|a|an|each|every) ([a-z][a-z'-]*)")


def _denominators(text: str) -> set[str]:
    """What a rate is counted per: the word after "per" ("90 days per entry"), or a time unit after a / an / each /
    every ("twice a day")."""
    out = set()
    for m in _RATE.finditer(text):
        word = m.group(2)
        unit = lx.UNITS.get(word, "")
        if m.group(1) == "per":
            out.add(unit or canonical(word))
        elif unit in lx.TIME_UNITS:
            out.add(unit)
    return out


def check_units(query: Facts, stored: Facts) -> Verdict:
    """Units of measure and currencies agree; a time unit may be implicit on one side ("how long"); a rate is
    counted per the same thing on both sides when both say what ("per entry" is not "per year")."""
    q_per, s_per = _denominators(query.normalized), _denominators(stored.normalized)
    if q_per and s_per and q_per != s_per:
        return _refuse("units", sorted(q_per - s_per), sorted(s_per - q_per))
    q, s = set(query.units), set(stored.units)
    if q == s:
        return _ok("units")
    only_q, only_s = q - s, s - q
    if not (only_q and only_s) and (only_q | only_s) <= lx.TIME_UNITS and (q & s or not (q and s)):
        return _ok("units")
    return _refuse("units", only_q, only_s)


def check_dates(query: Facts, stored: Facts) -> Verdict:
    """Dates and times agree: weekdays, months, seasons, holidays, parts of the day, relative days."""
    if query.dates == stored.dates:
        return _ok("dates")
    return _refuse("dates", query.dates - stored.dates, stored.dates - query.dates)


#: Negating prefixes that are written as a word of their own ("non profit", "anti glare").
_STANDALONE_PREFIXES = frozenset({"non", "anti"})


def _negated_words(a: Facts, b: Facts) -> list[str]:
    """Words of `a` that are a word of `b` with a negating prefix (incompatible / compatible)."""
    out = []
    theirs = set(b.content)
    for word in set(a.content) - theirs:
        if word in _STANDALONE_PREFIXES and not any(w.startswith(word) for w in theirs):
            out.append(word)  # "a non profit" / "a profit": the prefix written apart still negates
            continue
        for prefix in lx.NEGATING_PREFIXES:
            if word.startswith(prefix) and len(word) - len(prefix) >= 3 and word[len(prefix):] in theirs:
                if prefix not in theirs:  # "anti skate" / "anti-skate": the same prefix, written apart
                    out.append(word)
                break
    return out


def check_negation(query: Facts, stored: Facts) -> Verdict:
    """Both texts carry the same number of negation cues, and neither negates a word by a prefix."""
    if len(query.negations) != len(stored.negations):
        return _refuse("negation", query.negations, stored.negations)
    q, s = _negated_words(query, stored), _negated_words(stored, query)
    if q or s:
        return _refuse("negation", q, s)
    return _ok("negation")


def check_scope(query: Facts, stored: Facts) -> Verdict:
    """Quantifiers and ordering words agree; "all"/"any" may be implicit on the side that has no scope word."""
    q, s = query.scope, stored.scope
    if q == s:
        return _ok("scope")
    only_q, only_s = q - s, s - q
    if not (only_q and only_s) and (only_q | only_s) <= lx.IMPLICIT_SCOPE:
        return _ok("scope")
    return _refuse("scope", only_q, only_s)


def check_intent(query: Facts, stored: Facts) -> Verdict:
    """The kind of question agrees: who, when, where, why, how much, how long, how old, ..."""
    if query.kind and stored.kind and query.kind != stored.kind:
        return _refuse("intent", [query.kind], [stored.kind])  # definition / method / check
    if {query.modal, stored.modal} == {"can", "should"}:
        return _refuse("intent", [query.modal], [stored.modal])
    # How to do it is not whether to do it, nor whether it works: "how do I X" / "should I X" / "does X work";
    # what X is is not whether X is allowed, accurate or for me: "what is a mulligan" / "are mulligans allowed".
    if (query.kind, _asked(stored)) in _NOT_A_METHOD or (stored.kind, _asked(query)) in _NOT_A_METHOD:
        return _refuse("intent", [query.kind or query.modal], [stored.kind or stored.modal])
    # Nor how X is done, treated or measured: "what is preeclampsia" / "how is preeclampsia treated".
    for a, b in ((query, stored), (stored, query)):
        if a.kind == "definition" and not b.kind and b.normalized.startswith("how "):
            q_side, s_side = ("definition", "how") if a is query else ("how", "definition")
            return _refuse("intent", [q_side], [s_side])
    if query.intents == stored.intents:
        return _ok("intent")
    return _refuse("intent", query.intents - stored.intents, stored.intents - query.intents)


def _asked(f: Facts) -> str:
    """The modal of a yes/no question; none for a request put politely ("can you explain X" = "explain X")."""
    return "" if f.normalized.startswith(_POLITE) else f.modal


_POLITE = ("can you ", "could you ", "would you ", "will you ", "can u ", "can someone ", "could someone ")
_OTHER = canonical("another")
_NOT_A_METHOD = frozenset({("method", "should"), ("method", "whether"), ("check", "should"),
                           ("definition", "can"), ("definition", "should"), ("definition", "whether")})
_NOT_PIVOTS = frozenset({"&"}) | _ATTACH | _PERSON_ROLES  # a pronoun takes a role, it does not relate two


def _between(seq: Sequence[str], x: int, y: int) -> list[str]:
    lo, hi = sorted((x, y))
    return list(seq[lo + 1:hi])


def _joint_phrases(qs: Sequence[str], ss: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Both sequences with every "x @ y" written alike on both sides made one token: "a group of crows" moved
    whole across the verb ("a group of crows chasing a hawk" / "a hawk chasing a group of crows") is one
    thing changing sides, not an attached phrase moving."""
    def triples(seq: Sequence[str]) -> set[tuple[str, ...]]:
        return {tuple(seq[k:k + 3]) for k in range(len(seq) - 2) if seq[k + 1] in _ATTACH}

    shared = {t for t in triples(qs) & triples(ss) if t[0] not in _CONNECTORS and t[2] not in _CONNECTORS}
    if not shared:
        return tuple(qs), tuple(ss)

    def join(seq: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        k = 0
        while k < len(seq):
            if tuple(seq[k:k + 3]) in shared:
                out.append(f"{seq[k]} {seq[k + 2]}")
                k += 3
            else:
                out.append(seq[k])
                k += 1
        return tuple(out)

    return join(qs), join(ss)


#: Words whose two sides hold roles (a direction, a comparison, a sequence, an opponent): the thing right after
#: one is its object, so two things that trade that place trade roles.
_ROLE_PIVOTS = (lx.DIRECTIONAL - {"by", "minus"}) | {"against", "before", "after", "behind"}
# Words of one direction: "from the US to Canada" / "from Canada into the US" swap the two around one pivot.
_TOWARD = {"into": "to", "onto": "to", "towards": "to"}


def _trades_roles(qs: Sequence[str], ss: Sequence[str], pivot: str, a: str, b: str) -> bool:
    """Whether `a` and `b`, swapped around `pivot`, each take the place right after it on one side (not the
    asker: "from LEGO can I ..." / "can I ... from LEGO"). Single words only: a joined phrase ("boat port" /
    "boat starboard") stays an order refusal, as the check was measured."""
    if pivot not in _ROLE_PIVOTS or "<i>" in (a, b) or " " in a or " " in b:
        return False
    # As written, else with "into" / "onto" / "towards" read as "to" ("from the US to Canada" / "from Canada
    # into the US"): the first reading with the pivot once on each side decides.
    for p, q, s in ((pivot, qs, ss), (_TOWARD.get(pivot, pivot), [_TOWARD.get(t, t) for t in qs],
                                      [_TOWARD.get(t, t) for t in ss])):
        if q.count(p) == 1 and s.count(p) == 1:
            return {_after(q, q.index(p)), _after(s, s.index(p))} == {a, b}
    return False


def check_order(query: Facts, stored: Facts) -> Verdict:
    """Shared words do not swap sides around a directional word or a shared pivot; units keep their order.

    "km to miles" / "miles to km" and "A beat B" / "B beat A" swap roles; "difference between A and B" /
    "B vs A" (symmetric) and "the 404 code in HTTP" / "HTTP 404 code" (an attached phrase moved) do not.
    """
    qu, su = list(dict.fromkeys(query.units)), list(dict.fromkeys(stored.units))
    if len(qu) >= 2 and set(qu) == set(su) and qu != su:
        return Verdict(False, "units", f"{' to '.join(qu)} vs {' to '.join(su)}")
    qs, ss = _joint_phrases(query.sequence, stored.sequence)
    qc, sc = Counter(qs), Counter(ss)
    ways = ("to", "into", "from")
    if any(qc[d] for d in ways) and any(sc[d] for d in ways) and (qc["from"] > 0) != (sc["from"] > 0):
        return _refuse("order", [d for d in ways if qc[d]], [d for d in ways if sc[d]])  # email to / from John
    qp = {t: i for i, t in enumerate(qs) if qc[t] == 1 and t not in _CONNECTORS}
    sp = {t: i for i, t in enumerate(ss) if sc[t] == 1 and t not in _CONNECTORS}
    anchors = [t for t in qp if t in sp]
    dates = query.dates | stored.dates
    for i, a in enumerate(anchors):
        for b in anchors[i + 1:]:
            if (qp[a] < qp[b]) == (sp[a] < sp[b]):
                continue
            seg_q, seg_s = _between(qs, qp[a], qp[b]), _between(ss, sp[a], sp[b])
            if "&" in seg_q or "&" in seg_s:
                continue  # a symmetric relation
            toward_s = {_TOWARD.get(p, p) for p in seg_s}
            pivots = [p for p in seg_q if _TOWARD.get(p, p) in toward_s and p not in _NOT_PIVOTS]
            strong = [p for p in pivots if p in lx.DIRECTIONAL or p in dates]
            # A phrase attached by in/of/at that moved ("the 404 code in HTTP" / "HTTP 404 code") keeps its role;
            # the two swapping around the same in/of/at on both sides do not ("a Tesla at a CCS station" /
            # "a CCS car at a Tesla station").
            both = "@" in seg_q and "@" in seg_s  # in/on/of/at on both sides (not with/for: "A with B")
            attached = not both and bool(_ATTACH & {*seg_q[-1:], *seg_s[-1:], *seg_q[:1], *seg_s[:1]})
            pivot = strong[0] if strong else (pivots[0] if pivots and not attached else ("@" if both else None))
            if pivot is not None:
                first, second = (a, b) if qp[a] < qp[b] else (b, a)
                # Numbers or dates that swap roles are refused as such: the checks on explicit tokens are the
                # ones nothing overrules (services/cache/judge.py), and "a 30 amp RV into a 50 amp pedestal"
                # differs from "a 50 amp RV into a 30 amp pedestal" in its numbers as much as in its order;
                # so are two things that trade roles around a role word (check_roles).
                check = ("numbers" if {a, b} & {*query.numbers, *stored.numbers}
                         else "dates" if {a, b} & dates else "roles" if _trades_roles(qs, ss, pivot, a, b)
                         else "order")
                pivot = "at/in/of" if pivot == "@" else pivot
                return Verdict(False, check, f"{first} {pivot} {second} vs {second} {pivot} {first}")
    # The same directional words on both sides, and a word right after one on one side and right after
    # another on the other: "from my sister's account to mine" / "from mine to my sister's account".
    if Counter(t for t in qs if t in lx.DIRECTIONAL) == Counter(t for t in ss if t in lx.DIRECTIONAL):
        for t in anchors:
            before_q, before_s = _before(qs, qp[t]), _before(ss, sp[t])
            if before_q in lx.DIRECTIONAL and before_s in lx.DIRECTIONAL and before_q != before_s:
                return Verdict(False, "order", f"{before_q} {t} vs {before_s} {t}")
    # Owner and owned swapped: "my sister's friend" / "my friend's sister" (or "the sister of my friend").
    q_owns, s_owns = query.owns | query.owns_of, stored.owns | stored.owns_of
    swapped = next(((a, b) for a, b in q_owns if (b, a) in s_owns and (a, b) not in s_owns), None)
    if swapped is not None:
        a, b = swapped
        return Verdict(False, "order", f"{a}'s {b} vs {b}'s {a}")
    # The same owner of another thing, both things named on both sides: "my neighbor's tree falls on my house" /
    # "my tree falls on my neighbor's house".
    for x, y in query.owns:
        z = next((z for o, z in stored.owns if o == x and z != y and z in query.content and y in stored.content
                  and (x, z) not in query.owns), None)
        if z is not None:
            return Verdict(False, "order", f"{x}'s {y} vs {x}'s {z}")
    # The owned one acting on one side, the owner acting on it on the other: "for my toddler's brother to bite
    # him" / "for my toddler to bite his brother".
    for owning, other_side in ((query, stored), (stored, query)):
        acting = _owned_acts(owning, other_side)
        if acting is not None:
            x, y, v = acting
            forms = [f"{x}'s {y} {v}", f"{x} {v} {y}"]
            q_form, s_form = forms if owning is query else forms[::-1]
            return Verdict(False, "order", f"{q_form} vs {s_form}")
    # The doer on one side, the one a person does it to on the other: "was the email sent by my manager" (my
    # manager sends) / "did I send the email to my manager".
    for t in anchors:
        before_q, before_s = _before(qs, qp[t]), _before(ss, sp[t])
        if (before_q in _ROLE_MARKS and qs[0] in _PERSON_ROLES and sp[t] == 0) or (
                before_s in _ROLE_MARKS and ss[0] in _PERSON_ROLES and qp[t] == 0):
            return Verdict(False, "order", f"{before_q or 'subject'} {t} vs {before_s or 'subject'} {t}")
    # The same two people, the other one doing it: "can I install ... without my landlord's permission" / "can my
    # landlord install ... without my permission".
    q_who, s_who = query.asker, stored.asker
    if q_who and s_who and q_who != s_who and {q_who, s_who} <= set(query.people) & set(stored.people):
        return Verdict(False, "order", f"{q_who} does it vs {s_who} does it")
    # Two words before the same head swapped: "feed my dog cat food" / "feed my cat dog food".
    for k in range(len(qs) - 2):
        a, b, head = qs[k:k + 3]
        if a in qp and b in qp and head not in _CONNECTORS and a in sp and sp[a] == sp.get(b, -9) + 1 \
                and sp[a] + 1 < len(ss) and ss[sp[a] + 1] == head:
            return Verdict(False, "order", f"{a} {b} {head} vs {b} {a} {head}")
    return _ok("order")


_ROLE_MARKS = frozenset({"to", "from", "into"})


def _mark_others(sequence: list[str]) -> list[str]:
    """ "another kid" is one token ("kid~") in the sequence, apart from "my kid": "my child bit another kid" /
    "another kid bit my child" then swap two words around "bit"."""
    out: list[str] = []
    k = 0
    while k < len(sequence):
        t = sequence[k]
        after = sequence[k + 1] if k + 1 < len(sequence) else ""
        if t == _OTHER and after and after not in _CONNECTORS and after not in _PERSON_ROLES and after != _OTHER:
            out.append(after + "~")
            k += 2
        else:
            out.append(t)
            k += 1
    return out


def _names_a_thing(word: str, before: str, nxt: str) -> bool:
    """A filler word used as content: "my well pump" (not "well, ..."), "an easy run" (not "an easy way to")."""
    if word == "well":
        return before in lx.DETERMINERS
    if word in ("easy", "simple"):
        return nxt.isalpha() and nxt not in _EASY_FILLER_HEADS and nxt not in _SKIP
    return False


_EASY_FILLER_HEADS = frozenset({"way", "ways", "steps", "step", "method", "methods", "fix", "fixes", "question",
                                "trick", "tricks", "tip", "tips", "guide", "solution", "to", "enough"})


def _why_verb_after(toks: Sequence[tuple[str, str, bool]], i: int) -> int:
    """After the what/which at toks[i - 1]: how many tokens up to and including a why-verb, maybe behind
    auxiliaries ("what could be causing it"); 0 when none follows."""
    for k, (word, _, _) in enumerate(toks[i:i + 4]):
        if word in lx.WHY_VERBS:
            return k + 1
        if word not in lx.WHY_AUXILIARIES:
            return 0
    return 0


def _owned_acts(a: Facts, b: Facts) -> tuple[str, str, str] | None:
    """(owner, owned, verb) where `a` reads "X's Y <verb>" and `b` reads "X <verb> ... Y" (each word once)."""
    seq_a, seq_b = a.sequence, b.sequence
    for x, y in a.owns | a.owns_of:
        if seq_a.count(x) != 1 or seq_a.count(y) != 1 or seq_b.count(x) != 1 or seq_b.count(y) != 1:
            continue
        at = seq_a.index(y)
        v = next((t for t in seq_a[at + 1:] if t not in _CONNECTORS and t not in _PERSON_ROLES), None)
        if v is None or seq_a.index(x) > at or seq_b.count(v) != 1:
            continue
        if seq_b.index(x) < seq_b.index(v) < seq_b.index(y):
            return x, y, v
    return None


def _owned_pairs(pattern: re.Pattern[str], normalized: str, owner: int, owned: int,
                 not_owners: frozenset[str] = frozenset()) -> frozenset[tuple[str, str]]:
    """(owner, owned) pairs in canonical form, from the groups of `pattern` that hold them."""
    return frozenset((canonical(m[owner]), canonical(m[owned])) for m in pattern.finditer(normalized)
                     if m[owner] not in not_owners) or _NO_PAIRS


_NO_PAIRS: frozenset[tuple[str, str]] = frozenset()  # shared by the many texts without one


_POSSESSIVE_PERSONS = {"my": "<i>", "our": "<we>", "your": "<you>", "his": "<he>", "her": "<he>", "their": "<they>"}


def _person(word: str) -> str:
    """The person a word names ("<i>" for I / me / my, a canonical role noun), else ""."""
    word = word.strip("?.!,")
    if word in lx.PERSONS or word in _POSSESSIVE_PERSONS:
        return lx.PERSONS.get(word) or _POSSESSIVE_PERSONS[word]
    c = canonical(word)
    return c if c in _ROLES else ""


def _asker(tokens: Sequence[str]) -> str:
    """The person a question opened by a modal or an auxiliary is about ("can my landlord ...": landlord; "is my
    sister's friend ...": friend), "" when it does not open so or its subject is not a person."""
    if len(tokens) < 2 or tokens[0] not in lx.AUXILIARIES:
        return ""
    k = 1
    while k < len(tokens) and (tokens[k] in lx.DETERMINERS or tokens[k].endswith("'s")):
        k += 1  # determiners and owners: the subject is the owned one
    return _person(tokens[k]) if k < len(tokens) else ""


def _before(seq: Sequence[str], at: int) -> str:
    """The token right before position `at` of `seq` ("" at the start)."""
    return seq[at - 1] if at else ""


def _after(seq: Sequence[str], at: int) -> str:
    """The token right after position `at` of `seq` ("" at the end)."""
    return seq[at + 1] if at + 1 < len(seq) else ""


def check_entities(query: Facts, stored: Facts) -> Verdict:
    """Names, code-like tokens and quoted text of either text appear in the other (case-insensitively)."""
    # A name in the plural is the same name: "Tesla Superchargers" / "a tesla supercharger".
    q_forms, s_forms = {_plural_less(w) for w in query.words}, {_plural_less(w) for w in stored.words}
    missing_q = {e for e in query.entities if e not in stored.words and _plural_less(e) not in s_forms}
    missing_q |= {" ".join(sorted(q)) for q in query.quoted if not q.issubset(stored.words)}
    missing_s = {e for e in stored.entities if e not in query.words and _plural_less(e) not in q_forms}
    missing_s |= {" ".join(sorted(q)) for q in stored.quoted if not q.issubset(query.words)}
    if not missing_q and not missing_s:
        return _ok("entities")
    return _refuse("entities", missing_q, missing_s)


def _plural_less(word: str) -> str:
    """The word without a plural "s" (superchargers -> supercharger; not "ss", "us", "is")."""
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def _typo(a: str, b: str) -> bool:
    """One edit or one swap of adjacent letters apart, in words long enough for that to be a typo."""
    if a[0] != b[0] or min(len(a), len(b)) < 4 or max(len(a), len(b)) < 5 or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long_[k]), len(short))
    return short[i:] == long_[i + 1:]


_DERIVATIONS = ("ment", "ation", "ion", "er", "or", "ance", "ence", "anc", "enc", "ist", "ure", "al", "ibl")


def _derived(a: str, b: str) -> bool:
    """`a` is `b` plus a derivational suffix (treatment / treat, painter / paint), or the reverse."""
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    if len(short) >= 5 and short.endswith("nt") and long_ == short[:-1] + "cy":
        return True  # pregnant / pregnancy, urgent / urgency
    if len(short) < 4 or not long_.startswith(short):
        return False
    suffix = long_[len(short):]
    return suffix in _DERIVATIONS and (suffix != "er" or len(short) >= 5)


# Derivational suffixes and what they replace, to find the verb of a noun: verification -> verify.
_NOUN_SUFFIXES = (("ification", "ify"), ("ation", ""), ("ation", "e"), ("ition", ""), ("ion", ""),
                  ("ion", "e"), ("ment", ""), ("al", ""), ("ance", ""), ("ence", ""))


@lru_cache(maxsize=4096)
def _base_forms(word: str) -> frozenset[str]:
    """Canonical forms of the words `word` derives from (verification -> verify -> its synonym group)."""
    out = set()
    for suffix, replacement in _NOUN_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) + len(replacement) >= 4:
            out.add(canonical(word[: -len(suffix)] + replacement))
    return frozenset(out)


def _wordnet_synonyms(a: str, b: str) -> bool:
    """Synonyms in WordNet under the sense restriction of build_lexicon.py, and not antonyms there."""
    return b in _WN_SYNONYMS.get(a, ()) and frozenset((a, b)) not in _WN_ANTONYMS


def _matches(a: str, b: str) -> bool:
    return _typo(a, b) or _derived(a, b) or b in _base_forms(a) or a in _base_forms(b) or _wordnet_synonyms(a, b)


def _take_compounds(mine: list[str], theirs: list[str], their_compounds: Sequence[str]) -> None:
    """Removes a word of `mine` that the other text writes as 2-3 words (NullPointerException / null pointer
    exception), with those words from `theirs`."""
    for word in list(mine):
        prefix = word + " "
        for compound in their_compounds:
            if not compound.startswith(prefix):
                continue
            parts = compound.split(" ")[1:]
            if not Counter(parts) - Counter(theirs):
                mine.remove(word)
                for part in parts:
                    theirs.remove(part)
                break


def _differing(query: Facts, stored: Facts) -> tuple[list[str], list[str]]:
    """The content words on one side only (query's, stored's), a name written as one word or several aside."""
    q, s = Counter(query.content), Counter(stored.content)
    only_q, only_s = list((q - s).elements()), list((s - q).elements())
    _take_compounds(only_q, only_s, stored.compounds)
    _take_compounds(only_s, only_q, query.compounds)
    return only_q, only_s


#: Opposite prefixes, both ways round (check_opposites: "lefty" / "righty", "upstream" / "downstream").
_OPPOSITE_PREFIXES = tuple((x, y) for a, b in (("left", "right"), ("up", "down"), ("over", "under"), ("in", "out"),
                                                ("pre", "post"), ("upper", "lower"), ("front", "back"))
                           for x, y in ((a, b), (b, a)))


# "left" / "right" naming a side or a direction (not "I left my keys", not "the right answer"): before a hyphen
# (left-arm, right-handed), after a turn or a determiner, or before a side noun.
_SIDE = re.compile(
    r"\b(left|right)(?=-[a-z])"
    r"|(?:\b(?:turn|turning|turned|veer|keep|stay|move|merge|swipe|scroll|lean|tilt)\s+)(left|right)\b"
    r"|\b(left|right)(?=\s+(?:side|hand|handed|hander|handers|arm|arms|leg|legs|foot|feet|eye|eyes|ear|ears|knee|"
    r"knees|shoulder|shoulders|wrist|lane|lanes|turn|turns|click|wing|field|fielder|back|tackle|guard|bank|brain|"
    r"margin|column|pane|panel|sidebar|shift|stick|trigger|bumper|mouse|button|of\b))")
_SIDE_ALTERNATIVES = re.compile(r"\b(?:left|right)\b[\w\s-]{0,20}\b(?:or|and|vs|versus|to)\b[\w\s-]{0,20}"
                                r"\b(?:left|right)\b")


def _sides(text: str) -> list[str]:
    """The sides a text names, in order ("left-arm ... right-handers": left, right)."""
    if "left" not in text and "right" not in text:
        return []
    return [next(g for g in m.groups() if g) for m in _SIDE.finditer(text)]


def _sides_swapped(query: Facts, stored: Facts) -> tuple[str, str] | None:
    """(query side, stored side) where the two texts name opposite sides: "turn left" / "turn right", or both
    sides in the other order ("left-arm spinners against right-handers" / "right-arm ... left-handers"); not
    "left or right" written either way round."""
    qs, ss = _sides(query.normalized), _sides(stored.normalized)
    if not qs or not ss or qs == ss:
        return None
    if _SIDE_ALTERNATIVES.search(query.normalized) or _SIDE_ALTERNATIVES.search(stored.normalized):
        return None  # "left or right", "from left to right": a choice or a sweep, not two roles
    if set(qs) != set(ss):  # one side on each: left / right
        return (qs[0], ss[0]) if len(set(qs)) == 1 and len(set(ss)) == 1 else None
    return (" ".join(qs), " ".join(ss))


def check_opposites(query: Facts, stored: Facts) -> Verdict:
    """No word is replaced by its opposite, and no verb takes another particle (take off / take on)."""
    only_q, only_s = _differing(query, stored)
    # Both poles on both sides ("pros and cons" / "advantages and disadvantages") oppose nothing.
    both_poles = query.both_poles and stored.both_poles
    # A word replaced by its WordNet antonym refuses whatever else would match them (a typo, a derivation).
    opposed = None if both_poles else next(((a, b) for a in only_q for b in only_s
                                            if frozenset((a, b)) in _WN_ANTONYMS), None)
    if opposed is None and not both_poles:  # a word opposed to one the other text has as filler: "slowly thaw" /
        # "quickly thaw"; not when its own text has that word too ("clean the dirty pins" / "clean the pins")
        opposed = next(((a, w) for a in only_q for w in stored.words if frozenset((a, c := canonical(w))) in
                        _WN_ANTONYMS and c not in _forms(query.words, query.content)), None) or next(
            ((w, b) for b in only_s for w in query.words if frozenset((b, c := canonical(w))) in _WN_ANTONYMS
             and c not in _forms(stored.words, stored.content)), None)
    if opposed is None:  # the same word after opposite prefixes: lefty / righty, overbite / underbite, inbox / outbox
        opposed = next(((a, b) for a in only_q for b in only_s for x, y in _OPPOSITE_PREFIXES
                        if a.startswith(x) and b.startswith(y) and len(a) > len(x) and a[len(x):] == b[len(y):]),
                       None)
    if opposed is None:  # left / right as sides: "turn left" / "turn right", "left-arm ... right-handers" swapped
        opposed = _sides_swapped(query, stored)
    if opposed is not None:
        return _refuse("opposites", [opposed[0]], [opposed[1]])
    # The same verb with another particle: "take off my shoes" / "take on my shoes" (a particle may be
    # moved or left out: "take my shoes off").
    q_verbs = {p.split()[0]: p for p in query.particles - stored.particles}
    clash = [(q_verbs[p.split()[0]], p) for p in stored.particles - query.particles if p.split()[0] in q_verbs]
    if clash:
        return _refuse("opposites", [clash[0][0]], [clash[0][1]])
    return _ok("opposites")


def check_content(query: Facts, stored: Facts) -> Verdict:
    """No content word is replaced by another; at most MAX_ADDED_WORDS appear on one side only."""
    only_q, only_s = _differing(query, stored)
    names = {*query.entities, *stored.entities}
    for a in list(only_q):
        if a in names:
            continue
        match = next((b for b in only_s if b not in names and _matches(a, b)), None)
        if match is not None:
            only_q.remove(a)
            only_s.remove(match)
    if only_q and only_s:
        return _refuse("content", only_q, only_s)
    # An added word is tolerated only when nothing else moved: not with a quantifier left implicit ("all
    # images" / "unused images") nor a member of a coordination dropped ("ice or heat" / "heat").
    allowed = MAX_ADDED_WORDS
    if query.scope != stored.scope or ("&" in query.sequence) != ("&" in stored.sequence):
        allowed = 0
    if any(w in f.referred for f, words in ((query, only_q), (stored, only_s)) for w in words):
        allowed = 0  # someone else asks or acts: "what forms does the recipient need", "my boss's assistant"
    if len(only_q) + len(only_s) > allowed or any(w in _ACTIONS for w in only_q + only_s):
        return _refuse("content", only_q, only_s)
    return _ok("content")


Check = Callable[[Facts, Facts], Verdict]


def check_roles(query: Facts, stored: Facts) -> Verdict:
    """Two things that trade places around a role word, each taking the place right after it: "swap cow milk
    for goat milk" / "goat milk for cow milk", "India against Pakistan" / "Pakistan against India", "catch it
    from humans" / "humans catch it from parrots".

    The order check's refusals of that kind (it names them "roles"), run as a check of their own so that the
    judge, which may overrule `order` (it also refuses clauses moved around a shared word) and has been seen
    to serve these swaps at 0.99+, never overrules them. The word right after the role word must differ: "to
    clean stamps, use water" / "use water to clean stamps" keeps "clean" after "to" and stays an order refusal.
    """
    verdict = check_order(query, stored)
    return verdict if verdict.check == "roles" else _ok("roles")


#: The checks in the order they run; the first refusal wins. Names are the keys of the refusal counters.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("numbers", check_numbers),
    ("units", check_units),
    ("dates", check_dates),
    ("negation", check_negation),
    ("scope", check_scope),
    ("intent", check_intent),
    ("roles", check_roles),
    ("order", check_order),
    ("entities", check_entities),
    ("opposites", check_opposites),
    ("content", check_content),
)
CHECK_NAMES: tuple[str, ...] = tuple(name for name, _ in CHECKS)


def verify(query: str, stored: str, checks: Sequence[tuple[str, Check]] = CHECKS) -> Verdict:
    """Accepts `stored` as the same question as `query`, or names the first check that refuses it."""
    q, s = analyze(query), analyze(stored)
    if not q.normalized or not s.normalized:
        return Verdict(False, "empty", "no question text")
    if q.normalized == s.normalized:
        return Verdict(True, ACCEPTED, IDENTICAL)
    for _, check in checks:
        verdict = check(q, s)
        if not verdict.ok:
            return verdict
    return Verdict(True, ACCEPTED, "passed " + ", ".join(name for name, _ in checks))
