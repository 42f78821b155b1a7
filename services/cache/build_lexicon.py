"""Builds `services/cache/wordnet_synonyms.tsv`, the WordNet part of the verifier's lexicon.

Run by hand when the rules below change (the output is committed; nothing is read from outside the
repository at run time):

    python -m services.cache.build_lexicon [--wordnet /usr/share/wordnet] [--out PATH] [--senses N]

Input: the WordNet 3.0 database files (Debian/Ubuntu package `wordnet-base`: `data.{noun,verb,adj,adv}`,
`index.*`, `cntlist.rev`), parsed directly (format: wndb(5), cntlist(5)); no nltk needed.

Output, one record a line, tab-separated:

    s <TAB> pos <TAB> word word ...   the members of one synset for which it is among their first N senses
    a <TAB> word <TAB> word           an explicit antonym pair (also a satellite adjective and the antonym of
                                      its head: "soaked" / "dry" through "wet")

Why a sense restriction: WordNet lists every sense of a word, so "get" shares a synset with "become"
(get sick), "fix" with "fasten" and "cheap" with "gaudy". A replaced word is harmless only when both words
most likely mean the same thing, so a synset links two words only when it is among the first `--senses`
senses of *each* (default 1: the most frequent sense, by the tag counts of `cntlist.rev`; a later sense
also needs `--min-ratio` times the first sense's count). Further, to keep the file small and the links
tight:
- a synset is kept only if some word of it was tagged in that sense (the concept occurs in real text);
- a word never tagged in a part of speech counts there only if it has one sense in it ("lawsuit"), and a
  part of speech tagged less than `--pos-share` of the word's main one not at all ("handle" the noun);
- participles used as adjectives or nouns ("departed", "running"), plurals of another noun ("irons",
  "glasses"), inflected forms the verifier maps elsewhere ("fell", "left") and -ly adverbs next to other
  adverbs ("presently" / "soon": the verifier reads "presently" as "present") are left out;
- only single words and the phrasal verbs the verifier joins ("throw up" -> "throwup") are kept: the
  verifier compares words after stemming, so other multi-word lemmas and proper names (capitalised
  lemmas) could never match.
Antonyms are kept whatever the sense (they only make the verifier refuse) when either side's synset was
tagged; a satellite adjective is paired with its head's antonyms within its first senses.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from services.cache import lexicon as lx

WORDNET_DIR = Path("/usr/share/wordnet")
OUT = lx.WORDNET_FILE
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# cntlist.rev sense keys carry the synset type as a digit (5 = adjective satellite).
SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
SENSES = 1
MIN_RATIO = 0.5
POS_SHARE = 0.25
_WORD = re.compile(r"[a-z]+")

LICENSE = """\
WordNet 3.0 license (this file is derived from the WordNet 3.0 database):

This software and database is being provided to you, the LICENSEE, by Princeton University under the
following license.  By obtaining, using and/or copying this software and database, you agree that you
have read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and database and its documentation for
any purpose and without fee or royalty is hereby granted, provided that you agree to comply with the
following copyright notice and statements, including the disclaimer, and that the same appear on ALL
copies of the software, database and documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES, EXPRESS OR IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO
REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS,
COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in advertising or publicity pertaining to
distribution of the software and/or database.  Title to copyright in this software, database and any
associated documentation shall at all times remain with Princeton University and LICENSEE agrees to
preserve same."""


@dataclass
class Synset:
    pos: str  # n, v, a (head or satellite), r
    satellite: bool
    words: list[str]  # lemmas as written (lower case; "_" joins the words of a phrase)
    antonyms: list[tuple[int, str, int]] = field(default_factory=list)  # (source word #, target key, target word #)
    similar: list[str] = field(default_factory=list)  # heads of a satellite (keys "pos:offset")


def _lemma(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word)  # adjective markers: "galore(ip)"


def read_data(wordnet: Path) -> dict[str, Synset]:
    """Every synset of data.* by "pos:offset" (wndb(5): offset lex_filenum ss_type w_cnt words p_cnt ptrs)."""
    synsets: dict[str, Synset] = {}
    for pos, name in POS_FILES.items():
        for line in (wordnet / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # the license header
            fields = line.split(" | ", 1)[0].split()
            offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
            words = [_lemma(fields[4 + 2 * k]) for k in range(w_cnt)]
            k = 4 + 2 * w_cnt
            p_cnt = int(fields[k])
            syn = Synset(pos, ss_type == "s", words)
            for j in range(p_cnt):
                symbol, target, target_pos, src_tgt = fields[k + 1 + 4 * j: k + 5 + 4 * j]
                target_key = f"{'a' if target_pos == 's' else target_pos}:{target}"
                if symbol == "!":
                    syn.antonyms.append((int(src_tgt[:2], 16), target_key, int(src_tgt[2:], 16)))
                elif symbol == "&" and ss_type == "s":
                    syn.similar.append(target_key)
            synsets[f"{pos}:{offset}"] = syn
    return synsets


def read_index(wordnet: Path) -> dict[tuple[str, str], list[str]]:
    """(lemma, pos) -> its synset keys in WordNet's sense order (index.*, wndb(5))."""
    senses: dict[tuple[str, str], list[str]] = {}
    for pos, name in POS_FILES.items():
        for line in (wordnet / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            offsets = fields[6 + p_cnt: 6 + p_cnt + synset_cnt]
            senses[(lemma, pos)] = [f"{pos}:{o}" for o in offsets]
    return senses


def read_counts(wordnet: Path) -> dict[tuple[str, str, int], int]:
    """(lemma, pos, sense number) -> how often that sense was tagged in the semantic concordances."""
    counts: dict[tuple[str, str, int], int] = {}
    for line in (wordnet / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, sense, count = line.split()
        lemma, rest = key.split("%", 1)
        counts[(lemma, SS_TYPE[rest[0]], int(sense))] = int(count)
    return counts


def _usable(lemma: str) -> str | None:
    """The lemma as the verifier sees it, or None when it can never match a word of a question."""
    parts = lemma.split("_")
    if len(parts) == 1:
        # an inflected form the verifier maps to another word ("fell" the hide is not "fall")
        return lemma if _WORD.fullmatch(lemma) and lx.IRREGULAR.get(lemma, lemma) == lemma else None
    verb, particle = parts if len(parts) == 2 else ("", "")
    if particle in lx.PARTICLES and (verb in lx.PHRASAL_VERBS or verb in lx.LIGHT_PHRASAL_VERBS):
        return verb + particle  # "throw_up" -> "throwup", as the verifier joins a phrasal verb
    return None


def _plural_of(lemma: str, senses: dict[tuple[str, str], list[str]]) -> bool:
    """Whether a noun lemma is the plural of another noun lemma (irons / iron, glasses / glass)."""
    singulars = [lemma[:-1]] if lemma.endswith("s") and not lemma.endswith("ss") else []
    if lemma.endswith("es"):
        singulars.append(lemma[:-2])
    if lemma.endswith("ies"):
        singulars.append(lemma[:-3] + "y")
    return any((s, "n") in senses for s in singulars)


def kept_senses(senses: dict[tuple[str, str], list[str]], counts: dict[tuple[str, str, int], int],
                max_senses: int = SENSES, min_ratio: float = MIN_RATIO,
                pos_share: float = POS_SHARE) -> tuple[set[tuple[str, str]], set[str]]:
    """(lemma, synset key) pairs where the synset is one of the lemma's first senses (see the module doc),
    and the synsets tagged at least once in any of their words (the concepts that occur in real text)."""
    totals: dict[str, int] = defaultdict(int)  # a lemma's tag count over all its senses and parts of speech
    by_pos: dict[tuple[str, str], int] = defaultdict(int)
    for (lemma, pos, _), count in counts.items():
        totals[lemma] += count
        by_pos[(lemma, pos)] += count
    top = {lemma: max(by_pos[(lemma, p)] for p in POS_FILES) for lemma in totals}
    kept = set()
    tagged = set()
    for (lemma, pos), keys in senses.items():
        first = counts.get((lemma, pos, 1), 0)
        for rank, key in enumerate(keys, start=1):
            count = counts.get((lemma, pos, rank), 0)
            if count:
                tagged.add(key)
        if lemma.endswith(("ing", "ed")) and pos != "v":
            continue  # a participle ("departed", "running"): the verifier reads it as its verb
        if pos == "n" and _plural_of(lemma, senses):
            continue  # "irons" (chains), "glasses": the verifier reads them as the singular
        if first == 0 and (len(keys) > 1 or top.get(lemma, 0) > 0):
            continue  # never tagged in this part of speech: WordNet's sense order says nothing
        if by_pos[(lemma, pos)] < pos_share * top.get(lemma, 0):
            continue  # a rare part of speech of the word ("handle" as a noun)
        kept.add((lemma, keys[0]))
        for rank, key in enumerate(keys[1:max_senses], start=2):
            if counts.get((lemma, pos, rank), 0) < max(1, min_ratio * first):
                break
            kept.add((lemma, key))
    return kept, tagged


def build(wordnet: Path, max_senses: int = SENSES, min_ratio: float = MIN_RATIO,
          untagged: bool = False, pos_share: float = POS_SHARE) -> tuple[list[str], list[str]]:
    """The synset lines and antonym lines of the output file."""
    synsets = read_data(wordnet)
    senses = read_index(wordnet)
    kept, tagged = kept_senses(senses, read_counts(wordnet), max_senses, min_ratio, pos_share)
    groups: set[tuple[str, tuple[str, ...]]] = set()
    for key, syn in synsets.items():
        if key not in tagged and not untagged:
            continue
        words = syn.words
        if syn.pos == "r" and any(not w.endswith("ly") for w in words):
            # "presently" (soon) is read as its adjective "present": -ly adverbs pair only with each other
            words = [w for w in words if not w.endswith("ly")]
        members = sorted({u for w in words if w.islower() and (w, key) in kept and (u := _usable(w)) is not None})
        if len(members) >= 2:
            groups.add((syn.pos, tuple(members)))
    antonyms: set[tuple[str, str]] = set()

    def add(a: str, b: str) -> None:
        ua, ub = _usable(a.lower()), _usable(b.lower())
        if ua and ub and ua != ub and a.islower() and b.islower():
            antonyms.add((min(ua, ub), max(ua, ub)))

    heads: dict[str, list[str]] = defaultdict(list)  # head adjective synset -> its antonym words
    for key, syn in synsets.items():
        for src, target, tgt in syn.antonyms:
            if key not in tagged and target not in tagged:
                continue
            other = synsets[target].words[tgt - 1]
            add(syn.words[src - 1], other)
            if syn.pos == "a" and not syn.satellite:
                heads[key].append(other)
    for key, syn in synsets.items():  # indirect antonyms: a satellite vs the antonyms of its head
        for head in syn.similar if key in tagged else ():
            for other in heads.get(head, ()):
                for word in syn.words:
                    if (word.lower(), key) in kept:
                        add(word, other)
    syn_lines = sorted(f"s\t{pos}\t{' '.join(words)}" for pos, words in groups)
    ant_lines = sorted(f"a\t{a}\t{b}" for a, b in antonyms)
    return syn_lines, ant_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="WordNet 3.0 dict directory")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--senses", type=int, default=SENSES, help="first N senses of a word count")
    parser.add_argument("--min-ratio", type=float, default=MIN_RATIO,
                        help="a later sense counts only if tagged >= this share of the first sense's count")
    parser.add_argument("--pos-share", type=float, default=POS_SHARE,
                        help="a part of speech counts only if tagged >= this share of the word's main one")
    parser.add_argument("--untagged", action="store_true", help="also synsets never tagged (rare words)")
    args = parser.parse_args(argv)
    syn_lines, ant_lines = build(args.wordnet, args.senses, args.min_ratio, args.untagged, args.pos_share)
    header = [
        "# WordNet synonyms and antonyms for the semantic-cache verifier (services/cache/verifier.py).",
        "# Generated by `python -m services.cache.build_lexicon` from WordNet 3.0; do not edit by hand.",
        f"# Sense restriction (see build_lexicon.py): first {args.senses} sense(s) of each word, a later one "
        f"only when tagged >= {args.min_ratio:g} x the first;",
        f"# parts of speech tagged >= {args.pos_share:g} x the word's main one; "
        f"{'all synsets' if args.untagged else 'synsets tagged at least once'}.",
        "# Records: s<TAB>pos<TAB>synonyms (space-separated) | a<TAB>word<TAB>antonym",
        "#",
        *(f"# {line}".rstrip() for line in LICENSE.splitlines()),
    ]
    args.out.write_text("\n".join([*header, *syn_lines, *ant_lines]) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(syn_lines)} synsets, {len(ant_lines)} antonym pairs, "
          f"{args.out.stat().st_size // 1024} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
