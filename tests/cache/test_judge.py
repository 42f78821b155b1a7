"""The cache with the embedder's paraphrase judge: real embedder (model and judge), real cache, real embeddings.

The rules alone are tested with synthetic vectors in test_service.py; here the judge overrules a vocabulary
refusal, never a number, vetoes what the rules wrongly accept, and when it is gone the rules decide alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from tests.cache.conftest import Cache, StartCache, cache_metrics, chat
from tests.conftest import StartService
from weir.embedder.v1 import embedder_service_pb2 as emb_pb
from weir.embedder.v1 import embedder_service_pb2_grpc as emb_grpc
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.redis_local import free_port

Embed = Callable[[str], Awaitable[np.ndarray]]

# The content check refuses it (notebook / laptop, extend / last longer): vocabulary no rule holds.
STORED, PARAPHRASE = "How can I make my laptop battery last longer?", "tips to extend notebook battery life"
# A trap the rules accept (up / down read as particles of "drive", said alike on both sides).
VETOED = ("How should I drive a loaded forklift up a ramp?", "how should i drive a loaded forklift down a ramp")


@pytest.fixture
def embedder(start_service: StartService, model_dir: Path) -> supervisor.Process:
    return start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir)})


@pytest.fixture
async def embed(embedder: supervisor.Process) -> AsyncIterator[Embed]:
    async with open_channel(embedder.grpc) as channel:
        stub = emb_grpc.EmbedderServiceStub(channel)

        async def run(text: str) -> np.ndarray:
            resp = await stub.Embed(emb_pb.EmbedRequest(text=text))
            return np.frombuffer(resp.embedding.vector, dtype="<f4").copy()

        yield run


@pytest.fixture
async def judged(start_cache: StartCache, embedder: supervisor.Process) -> Cache:
    return await start_cache({"WEIR_CACHE_JUDGE": "true", "WEIR_EMBEDDER_ADDR": embedder.grpc,
                              "WEIR_METRICS_PORT": "0"})


def judge_pairs(cache: Cache) -> dict[str, float]:
    """weir_cache_judge_pairs_total by outcome, from the cache's metrics."""
    prefix = 'weir_cache_judge_pairs_total{outcome="'
    return {k[len(prefix):-2]: v for k, v in cache_metrics(cache.proc).items() if k.startswith(prefix)}


def judge_calls(cache: Cache) -> float:
    """ScorePairs calls the cache made, from weir_cache_judge_seconds."""
    return cache_metrics(cache.proc).get("weir_cache_judge_seconds_count", 0.0)


async def ask(cache: Cache, embed: Embed, tenant: str, stored: str, query: str) -> tuple[float, str, bool]:
    """Stores `stored`, looks `query` up; (similarity of the best candidate, reason, hit)."""
    await cache.store(tenant, chat(stored), f"answer to {stored}", await embed(stored))
    resp = await cache.semantic(tenant, chat(query), await embed(query))
    assert resp.candidates, resp.reason
    return resp.candidates[0].similarity, resp.reason, resp.hit


async def test_the_judge_serves_a_paraphrase_the_rules_refuse(judged: Cache, embed: Embed, start_cache: StartCache,
                                                             embedder: supervisor.Process, tmp_path: Path) -> None:
    similarity, reason, hit = await ask(judged, embed, "acme", STORED, PARAPHRASE)
    assert similarity >= 0.7
    assert hit and reason.startswith("hit: judge ") and "overrules content (" in reason, reason
    resp = await judged.semantic("acme", chat(PARAPHRASE), await embed(PARAPHRASE))
    assert resp.answer.content == f"answer to {STORED}"
    assert resp.candidates[0].verdict == "accepted" and "overrules content" in resp.candidates[0].detail
    # The kind of question is a check the judge may overrule too ("what is the boiling point" asks "at what
    # temperature").
    _, reason, hit = await ask(judged, embed, "globex", "What is the boiling point of water?",
                               "at what temperature does water boil")
    assert hit and "overrules intent (" in reason, reason
    # A paraphrase the embedding scores below the rules' threshold: the judge reads it above its own gate (0.50
    # by default), and not when its gate is the rules' threshold.
    fly = ("How do I store a SCOBY between batches?", "whats the right way to keep my scoby in between brews")
    similarity, reason, hit = await ask(judged, embed, "initech", *fly)
    assert 0.5 <= similarity < 0.7 and hit and reason.startswith("hit: judge ") and "overrules content (" in reason, \
        reason
    higher = await start_cache({"WEIR_CACHE_JUDGE": "true", "WEIR_EMBEDDER_ADDR": embedder.grpc,
                                "WEIR_CACHE_JUDGE_SIM_THRESHOLD": "0.7", "WEIR_MILVUS_URI": str(tmp_path / "gate.db")})
    _, reason, hit = await ask(higher, embed, "initech", *fly)
    assert not hit and reason.startswith("miss: below threshold"), reason


async def test_a_pair_judged_once_is_not_judged_again(judged: Cache, embed: Embed,
                                                      embedder: supervisor.Process) -> None:
    await ask(judged, embed, "acme", STORED, PARAPHRASE)
    assert judge_pairs(judged) == {"scored": 1, "remembered": 0, "unavailable": 0, "slow": 0, "invalid": 0}
    assert judge_calls(judged) == 1
    v = await embed(PARAPHRASE)
    embedder.stop()  # the judge is gone: only the cache's LRU of recent scores can answer now
    resp = await judged.semantic("acme", chat(PARAPHRASE), v)
    assert resp.hit and resp.reason.startswith("hit: judge "), resp.reason
    assert judge_pairs(judged)["remembered"] == 1
    assert judge_calls(judged) == 1  # no call went out for it


async def test_the_judge_never_overrules_a_number(judged: Cache, embed: Embed) -> None:
    similarity, reason, hit = await ask(judged, embed, "acme", "Cancel my order 48213", "cancel my order 48231")
    assert similarity > 0.9
    assert not hit and reason.startswith("refused: numbers (48") and "judge" not in reason


async def test_the_judge_vetoes_what_the_rules_wrongly_accept(judged: Cache, embed: Embed) -> None:
    similarity, reason, hit = await ask(judged, embed, "acme", VETOED[0], VETOED[1])
    assert similarity >= 0.7
    assert not hit and reason.startswith("refused: judge (") and "< veto 0.05)" in reason, reason
    stats = await judged.stats("acme")
    assert stats.refusals_by_check["judge"] == 1


async def test_without_the_judge_the_rules_decide_alone(start_cache: StartCache, embed: Embed, tmp_path: Path,
                                                        start_service: StartService, model_dir: Path) -> None:
    def own(name: str) -> dict[str, str]:  # one Milvus Lite file per cache process
        return {"WEIR_MILVUS_URI": str(tmp_path / f"{name}.db")}

    gone = await start_cache({"WEIR_CACHE_JUDGE": "true", "WEIR_EMBEDDER_ADDR": f"127.0.0.1:{free_port()}",
                              "WEIR_METRICS_PORT": "0", **own("gone")})
    _, reason, hit = await ask(gone, embed, "acme", STORED, PARAPHRASE)
    assert not hit and reason.startswith("refused: content (") and "judge unavailable (UNAVAILABLE)" in reason
    # Verification running without the judge shows in the metrics, not only in each lookup's reason.
    assert judge_pairs(gone)["unavailable"] == 1 and judge_pairs(gone)["scored"] == 0
    assert judge_calls(gone) == 1  # the failed call is timed too
    _, reason, hit = await ask(gone, embed, "globex", "How do I reset my password?", "how do i reset my password")
    assert hit and reason == "hit"  # what the rules accept is served without the veto

    plain = start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir), "WEIR_EMBEDDER_JUDGE": "false"})
    unloaded = await start_cache({"WEIR_CACHE_JUDGE": "true", "WEIR_EMBEDDER_ADDR": plain.grpc, **own("unloaded")})
    _, reason, hit = await ask(unloaded, embed, "initech", STORED, PARAPHRASE)
    assert not hit and "judge not loaded by the embedder" in reason

    off = await start_cache({"WEIR_CACHE_JUDGE": "false", **own("off")})
    _, reason, hit = await ask(off, embed, "umbrella", STORED, PARAPHRASE)
    assert not hit and reason.startswith("refused: content (") and "judge" not in reason


async def test_the_best_candidate_is_judged_first_and_alone(judged: Cache, embed: Embed) -> None:
    for stored in ("How do I cancel my gym membership?", "How do I pause my gym membership?",
                   "How do I transfer my gym membership?"):
        await judged.store("acme", chat(stored), f"answer to {stored}", await embed(stored))
    query = "What's the way to cancel my gym membership?"
    resp = await judged.semantic("acme", chat(query), await embed(query))
    assert resp.hit and resp.answer.content == "answer to How do I cancel my gym membership?", resp.reason
    best, paused = resp.candidates[:2]
    assert best.verdict == "accepted" and "judge 0.9" in best.detail, best
    # "pause" is refused by the content check, which the judge may overrule: a single call for every candidate
    # would have asked the judge about it too, and its detail would carry a judge score.
    assert paused.question == "How do I pause my gym membership?" and paused.similarity >= 0.7, paused
    assert paused.verdict == "content" and "judge" not in paused.detail, paused


async def test_when_the_best_candidate_is_vetoed_the_next_is_judged(judged: Cache, embed: Embed) -> None:
    up, down = VETOED[0], "What's the right way to drive a loaded forklift down a ramp?"
    for stored in (up, down):
        await judged.store("acme", chat(stored), f"answer to {stored}", await embed(stored))
    resp = await judged.semantic("acme", chat(VETOED[1]), await embed(VETOED[1]))
    best, second = resp.candidates[:2]
    assert best.question == up and best.verdict == "judge", best
    assert resp.hit and resp.answer.content == f"answer to {down}", resp.reason
    assert second.question == down and second.verdict == "accepted" and "; judge 0.9" in second.detail, second
