"""The semantic-cache verifier on real sentence pairs: paraphrases pass, different questions are refused."""

from __future__ import annotations

import pytest

from services.cache.verifier import ACCEPTED, CHECK_NAMES, analyze, check_numbers, verify

PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password"),
    ("Cancel my order 48213", "Please cancel order #48213"),
    ("How do I reset my Gmail password?", "How can I reset my password in gmail?"),
    ("Why doesn't my code work?", "Why is my code not working?"),
    ("Transfer $1,200.50 to savings", "transfer $1200.5 to savings"),
    ("Python: how to sort a list", "How do I sort a list in Python?"),
    ("What does `os.path.join` do?", "Explain what os.path.join does"),
    ("Convert 5 km to miles", "convert five km to miles"),
    ("What’s the weather like in Paris today?", "What is the weather in Paris today"),
    ("List every user", "List all users"),
]

# (query, stored, check that must refuse, detail it must give)
DIFFERENT = [
    ("Don't cancel order 48231", "Cancel my order 48213", "numbers", "48231 vs 48213"),
    ("Don't cancel my order 48213", "Cancel my order 48213", "negation", "don't vs none"),
    ("Book a flight without a layover", "Book a flight with a layover", "negation", "without vs none"),
    ("I never received the package", "I received the package", "negation", "never vs none"),
    ("List all users", "List only admin users", "scope", "all vs only"),
    ("What was the first iPhone?", "What was the latest iPhone?", "scope", "first vs last"),
    ("Show the most expensive products", "Show the least expensive products", "scope", "most vs least"),
    ("What is the capital of France?", "What's the capital of Spain?", "entities", "france vs spain"),
    ("Transfer $500 to savings", "Transfer €500 to savings", "numbers", "$500 vs €500"),
    ("Give me 3 examples", "Give me two examples", "numbers", "3 vs 2"),
    ("Is Python 3.12 faster than 3.11?", "Is Python 3.11 faster than 3.12?", "", ""),
]


@pytest.mark.parametrize(("query", "stored"), PARAPHRASES)
def test_paraphrases_are_accepted(query: str, stored: str) -> None:
    verdict = verify(query, stored)
    assert verdict.ok, verdict
    assert verdict.check == ACCEPTED
    assert verify(stored, query).ok  # symmetric


@pytest.mark.parametrize(("query", "stored", "check", "detail"), [d for d in DIFFERENT if d[2]])
def test_different_questions_are_refused_by_the_right_check(query: str, stored: str, check: str,
                                                            detail: str) -> None:
    verdict = verify(query, stored)
    assert not verdict.ok
    assert (verdict.check, verdict.detail) == (check, detail)
    assert check in CHECK_NAMES


def test_the_issue_example_is_refused_by_numbers_first() -> None:
    verdict = verify("Don't cancel order 48231", "Cancel my order 48213")
    assert not verdict.ok
    assert str(verdict) == "numbers: 48231 vs 48213"
    # with the numbers equal, negation still refuses it
    assert verify("Don't cancel order 48213", "Cancel my order 48213").check == "negation"


def test_same_numbers_in_another_order_is_not_caught_by_numbers() -> None:
    """A known limit (multisets ignore order); documented so a later verifier can tighten it."""
    query, stored = DIFFERENT[-1][:2]
    assert check_numbers(analyze(query), analyze(stored)).ok


def test_identical_and_empty_texts() -> None:
    assert verify("  What is 2+2? ", "what is 2+2").detail == "identical"
    assert verify("", "anything").check == "empty"


def test_numbers_are_canonicalised() -> None:
    assert analyze("Pay 1,000,000 now").numbers == ("1000000",)
    assert analyze("It costs $3.50, or 3.0%").numbers == ("$3.5", "3%")
    assert analyze("ticket #00123 and ticket INV-2024-001").numbers == ("00123", "inv-2024-001")
    assert analyze("Which one is better, two or 3?").numbers == ("2", "3")


def test_sentence_initial_capitals_are_not_entities() -> None:
    facts = analyze("Where is Berlin? Tell me. Also: What about NASA and my_var in config.yaml?")
    assert facts.entities == {"berlin", "nasa", "my_var", "config.yaml"}
