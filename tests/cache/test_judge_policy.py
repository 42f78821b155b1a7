"""When the paraphrase judge has a say (services/cache/judge.py Policy): pure, no processes."""

from __future__ import annotations

import dataclasses

import pytest

from services.cache import checks, judge, verifier
from services.cache.judge import Policy
from services.cache.settings import CacheSettings
from weir.embedder.v1 import embedder_service_pb2 as emb_pb
from weir.kit.config import ConfigError, load

DEFAULTS = Policy.from_settings(load(CacheSettings, {}))
# A judge's gate below the rules' threshold (the default's is 0.50), at a round number for the tests.
POLICY = dataclasses.replace(DEFAULTS, gate=0.60)

# Refused by the content check alone (every other check passes): vocabulary no rule knows.
VOCAB = ("whats the best way to clear a blocked bathroom basin", "How do I unclog a bathroom sink?")
# Refused by the numbers check: never the judge's to overrule.
NUMBERS = ("Cancel my order 48213", "Cancel my order 48231")
SAME = ("How do I reset my password?", "how can I reset my password")


def test_defaults_are_the_documented_ones() -> None:
    assert (DEFAULTS.threshold, DEFAULTS.judge, DEFAULTS.gate, DEFAULTS.accept, DEFAULTS.veto) == \
        (0.70, True, 0.50, 0.99, 0.05)
    assert set(DEFAULTS.overrules) == {"scope", "intent", "order", "entities", "content"}
    assert [n for n, _ in DEFAULTS.hard_checks] == ["numbers", "units", "dates", "negation", "roles", "opposites"]
    assert DEFAULTS.floor == 0.50


def test_below_the_judges_gate_nobody_reads_it() -> None:
    assert POLICY.read(*VOCAB, similarity=0.55).kind == judge.BELOW
    assert POLICY.floor == 0.60
    assert dataclasses.replace(POLICY, judge=False).floor == 0.70


def test_a_vocabulary_refusal_goes_to_the_judge_and_a_number_or_an_opposite_never_does() -> None:
    reading = POLICY.read(*VOCAB, similarity=0.75)
    assert (reading.kind, reading.verdict.check) == (judge.OVERRULE, "content")
    numbers = POLICY.read(*NUMBERS, similarity=0.99)
    assert (numbers.kind, numbers.verdict.check) == (judge.REFUSE, "numbers")
    opposite = POLICY.read("how can i raise the seat on my motorbike", "How do I lower my motorcycle's seat height?",
                           similarity=0.8)
    assert (opposite.kind, opposite.verdict.check) == (judge.REFUSE, "opposites")
    # Two things trading roles: the order check's refusal the judge was seen to overrule at 0.99+.
    roles = POLICY.read("can a guinea pig catch a cold from a rabbit", "Can a rabbit catch a cold from a guinea pig?",
                        similarity=0.98)
    assert (roles.kind, roles.verdict.check) == (judge.REFUSE, "roles")
    moved = POLICY.read("Is it okay to use water to clean old stamps?", "To clean old stamps, is it okay to use water?",
                        similarity=0.95)
    assert (moved.kind, moved.verdict.check) == (judge.OVERRULE, "order")
    # Between the judge's gate and the rules' threshold only the judge can serve it.
    assert POLICY.read(*SAME, similarity=0.65).kind == judge.OVERRULE
    assert dataclasses.replace(POLICY, judge=False).read(*VOCAB, similarity=0.75).kind == judge.REFUSE


@pytest.mark.parametrize(("score", "served", "check"), [
    (0.995, True, "accepted"), (0.99, True, "accepted"), (0.98, False, "content"), (None, False, "content")])
def test_the_judge_overrules_at_accept(score: float | None, served: bool, check: str) -> None:
    reading = POLICY.read(*VOCAB, similarity=0.75)
    ok, verdict = POLICY.settle(reading, 0.75, score, "unavailable (UNAVAILABLE)")
    assert (ok, verdict.check) == (served, check)
    if score is not None and not served:
        assert verdict.detail.endswith(f"; judge {score:.3f} < 0.99")
    if score is None:
        assert "judge unavailable (UNAVAILABLE)" in verdict.detail
    elif served:
        assert verdict.detail.startswith(f"judge {score:.3f} overrules content (")


def test_what_the_rules_accept_is_served_unless_the_judge_vetoes_it() -> None:
    reading = POLICY.read(*SAME, similarity=0.97)
    assert reading.kind == judge.VETO
    assert POLICY.settle(reading, 0.97, 0.5)[0]
    assert POLICY.settle(reading, 0.97, None, "slower than 250 ms")[0]  # no judge: the rules decide alone
    refused, verdict = POLICY.settle(reading, 0.97, 0.01)
    assert not refused and verdict.check == "judge" and verdict.detail == "0.010 < veto 0.05"
    assert dataclasses.replace(POLICY, veto=0.0).read(*SAME, similarity=0.97).kind == judge.SERVE
    # The same text but for case and punctuation: nothing to veto.
    identical = POLICY.read("What is the capital of Kenya?", "what is the capital of kenya", similarity=0.91)
    assert (identical.kind, identical.verdict.detail) == (judge.SERVE, "identical")


def test_below_the_rules_threshold_the_judge_must_vouch() -> None:
    reading = POLICY.read(*SAME, similarity=0.65)
    ok, verdict = POLICY.settle(reading, 0.65, 0.5)
    assert not ok and verdict.check == "judge" and "similarity 0.650 < 0.700" in verdict.detail
    ok, verdict = POLICY.settle(reading, 0.65, 0.995)
    assert ok and "vouches below the similarity threshold" in verdict.detail


def test_settings_refuse_unknown_checks_and_crossed_thresholds() -> None:
    with pytest.raises(ConfigError) as err:
        load(CacheSettings, {"WEIR_CACHE_JUDGE_OVERRULES": "numbers,vibes", "WEIR_CACHE_JUDGE_VETO": "0.995"})
    assert "WEIR_CACHE_JUDGE_OVERRULES: unknown checks vibes" in str(err.value)
    assert "WEIR_CACHE_JUDGE_OVERRULES may not name numbers" in str(err.value)  # it was accepted before
    assert "0 <= veto <= accept <= 1" in str(err.value)
    assert load(CacheSettings, {"WEIR_CACHE_JUDGE_OVERRULES": "content"}).judge_overrules == ("content",)


def test_the_reading_travels_from_the_settings_to_the_request() -> None:
    assert DEFAULTS.reading == "stored_first" and DEFAULTS.pair_reading == emb_pb.PAIR_READING_B_FIRST
    both = Policy.from_settings(load(CacheSettings, {"WEIR_CACHE_JUDGE_READING": "both"}))
    assert both.pair_reading == emb_pb.PAIR_READING_BOTH
    with pytest.raises(ConfigError, match="WEIR_CACHE_JUDGE_READING must be both or stored_first"):
        load(CacheSettings, {"WEIR_CACHE_JUDGE_READING": "query_first"})


def test_the_settings_know_every_check_of_the_verifier() -> None:
    assert checks.CHECK_NAMES == verifier.CHECK_NAMES
