"""A slice of the labelled evaluation set (services/cache/eval) through the real embedder and cache, on
Milvus Lite and on the bundled Milvus server: the issue's goals hold on it. `weir cache eval` runs all of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.cache.eval.run import (
    Case,
    Outcome,
    Results,
    crowded_report,
    last_user,
    load_cases,
    merge,
    report,
    run_cases,
    run_crowded,
)
from services.cache.judge import Policy
from services.cache.settings import CacheSettings
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.kit import supervisor
from weir.kit.config import load

StartService = Callable[..., supervisor.Process]
#: Share of crowded-tenant queries that may be served another question's answer (the judge trained with other
#: questions of the domain as negatives served 1 of blind15's 600; the one before, 6.5 %).
OTHER_QUESTIONS_SERVED = 0.01


def eval_slice() -> list[Case]:
    """Every 6th single-turn pair and every 3rd conversation pair of the dev split (deterministic)."""
    cases = load_cases("dev")
    single = [c for c in cases if not c.multi_turn]
    multi = [c for c in cases if c.multi_turn]
    return single[::6] + multi[::3]


def test_the_eval_set_is_large_enough_and_labelled() -> None:
    cases = load_cases("all")
    single = [c for c in cases if not c.multi_turn]
    multi = [c for c in cases if c.multi_turn]
    assert len(single) >= 400 and len(multi) >= 60
    traps = {c.category for c in single if c.label == "trap"}
    assert {"negation", "numbers", "dates", "entities", "units", "scope", "order", "antonyms"} <= traps
    assert {c.label for c in multi} == {"should_hit", "trap"}
    assert len({c.id for c in cases}) == len(cases)
    held_out = [c for c in cases if c.split != "dev"]
    assert 0.2 <= len(held_out) / len(cases) < 1  # a tuning split and held-out splits (each new one adds here)


def test_runs_over_shares_of_the_cases_merge_into_one_result() -> None:
    """`weir cache eval` runs a cache per 1,000 cases (one tenant, so one Milvus partition, each) and merges."""
    cases = load_cases("dev")[:5]
    policy = Policy.from_settings(load(CacheSettings, {}))

    def part(chosen: list[Case], numbers: int, seconds: float) -> Results:
        stats = cache_pb.GetStatsResponse()
        stats.refusals_by_check["numbers"] = numbers
        return Results([Outcome(c, served=True) for c in chosen], policy, stats, {"store": seconds})

    merged = merge([part(cases[:2], 1, 1.5), part(cases[2:], 2, 2.0)])
    assert [o.case.id for o in merged.outcomes] == [c.id for c in cases]
    assert merged.stats is not None and merged.stats.refusals_by_check["numbers"] == 3
    assert merged.seconds == {"store": 3.5}


@pytest.mark.parametrize("backend", ["lite", "server"])
async def test_goals_hold_on_a_slice_of_the_eval_set(backend: str, start_service: StartService, redis_url: str,
                                                     model_dir: Path, request: pytest.FixtureRequest) -> None:
    env = {"WEIR_REDIS_URL": redis_url, "WEIR_EMBEDDER_MODEL_DIR": str(model_dir)}
    if backend == "server":
        env.update(request.getfixturevalue("server_env"))
    embedder = start_service("embedder", env)
    cache = start_service("cache", {**env, "WEIR_EMBEDDER_ADDR": embedder.grpc})
    cases = eval_slice()
    results = await run_cases(cache.grpc, embedder.grpc, cases, Policy.from_settings(load(CacheSettings, {})))
    text = report(results, failures=True)
    single = [o for o in results.outcomes if not o.case.multi_turn]
    multi = [o for o in results.outcomes if o.case.multi_turn]
    hits = [o.served for o in single if o.case.label == "should_hit"]
    traps = [o.served for o in single if o.case.label == "trap"]
    mt_hits = [o.served for o in multi if o.case.label == "should_hit"]
    mt_traps = [o.served for o in multi if o.case.label == "trap"]
    assert len(hits) >= 20 and len(traps) >= 25 and mt_hits and mt_traps
    assert sum(hits) / len(hits) >= 0.90, text
    assert sum(traps) == 0, text  # <= 1% of a few dozen traps is none
    assert sum(mt_traps) == 0, text
    assert sum(mt_hits) / len(mt_hits) >= 0.90, text
    assert "NOTE" not in text  # the threshold curve agrees with the live service
    assert "verifier and judge" in text  # the judge scored every candidate for the curve


async def test_a_query_is_not_served_another_question_of_its_topic(start_service: StartService, redis_url: str,
                                                                 model_dir: Path) -> None:
    """Every stored question of a domain in one tenant, as a real tenant holds many: a query may be served its own
    question's answer or nothing, and another question's answer only rarely. Split blind15 (never trained on), a
    third of its domains; the judge served another question's answer to 6.5 % of these queries before it was
    trained on such pairs (docs/cache.md, "Other questions of the same tenant")."""
    env = {"WEIR_REDIS_URL": redis_url, "WEIR_EMBEDDER_MODEL_DIR": str(model_dir)}
    embedder = start_service("embedder", env)
    cache = start_service("cache", {**env, "WEIR_EMBEDDER_ADDR": embedder.grpc})
    cases = load_cases("blind15")
    domains = sorted({c.domain for c in cases})[::3]
    cases = [c for c in cases if c.domain in domains]
    result = await run_crowded(cache.grpc, embedder.grpc, cases)
    text = crowded_report(result, failures=True)
    assert len(result.cases) >= 180 and result.tenants == len(domains)
    other = [c for c, served in zip(result.cases, result.served, strict=True)
             if served is not None and served != last_user(c.stored)]
    own_hits = [served is not None and served == last_user(c.stored)
                for c, served in zip(result.cases, result.served, strict=True) if c.label == "should_hit"]
    assert len(other) <= OTHER_QUESTIONS_SERVED * len(result.cases), text
    assert sum(own_hits) / len(own_hits) >= 0.40, text  # and it still serves paraphrases from a crowded tenant
