"""The cache as a real process over gRPC: real Redis, real Milvus Lite, synthetic unit-vector embeddings."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import grpc

from tests.cache.conftest import (
    Cache,
    StartCache,
    answer,
    cache_metrics,
    call_error,
    chat,
    check_concurrent_lookups,
    embedding,
    near,
    unit,
)
from weir.cache.v1 import cache_service_pb2 as pb
from weir.kit.redis_local import free_port, start_local_redis


async def test_exact_hit_and_miss(cache: Cache) -> None:
    req = chat("What is the boiling point of water at sea level?")
    miss = await cache.exact("acme", req)
    assert (miss.hit, miss.reason) == (False, "miss")

    stored = await cache.store("acme", req, "100 °C")
    assert stored.reason == "stored: exact; no embedding"
    hit = await cache.exact("acme", req)
    assert hit.hit and hit.reason == "hit"
    assert hit.answer.content == "100 °C"
    assert hit.answer.entry_id == stored.entry_id
    assert hit.answer.question == "What is the boiling point of water at sea level?"
    assert hit.answer.usage.total_tokens == 15 and hit.answer.finish_reason == "stop"
    assert hit.answer.created_unix > 0


async def test_exact_key_covers_temperature_system_prompt_and_model(cache: Cache) -> None:
    req = chat("Summarise the plot of Hamlet", system="Be brief.")
    await cache.store("acme", req, "A prince avenges his father.")
    assert (await cache.exact("acme", req)).hit
    for other in (
        chat("Summarise the plot of Hamlet", system="Be brief.", temperature=0.7),
        chat("Summarise the plot of Hamlet", system="Answer in French."),
        chat("Summarise the plot of Hamlet"),
        chat("Summarise the plot of Hamlet", system="Be brief.", model="fake-large"),
        chat("Summarise the plot of Macbeth", system="Be brief."),
    ):
        resp = await cache.exact("acme", other)
        assert not resp.hit, other


async def test_semantic_hit_for_a_near_vector_with_matching_text(cache: Cache) -> None:
    v = unit(1)
    stored = await cache.store("acme", chat("How do I reset my password?"), "Click 'Forgot password'.", v)
    assert stored.reason == "stored: exact+semantic"

    resp = await cache.semantic("acme", chat("How can I reset my password"), near(v, 0.93))
    assert resp.hit, resp.reason
    assert resp.reason == "hit"
    assert resp.answer.content == "Click 'Forgot password'."
    assert resp.answer.entry_id == stored.entry_id
    assert abs(resp.similarity - 0.93) < 1e-3
    assert [(c.entry_id, c.verdict) for c in resp.candidates] == [(stored.entry_id, "accepted")]
    assert resp.candidates[0].question == "How do I reset my password?"


async def test_semantic_refusal_names_the_check(cache: Cache) -> None:
    v = unit(2)
    await cache.store("acme", chat("Cancel my order 48213"), "Order 48213 cancelled.", v)

    resp = await cache.semantic("acme", chat("Don't cancel order 48231"), near(v, 0.97))
    assert not resp.hit
    assert resp.reason == "refused: numbers (48231 vs 48213)"
    assert abs(resp.similarity - 0.97) < 1e-3
    assert [(c.verdict, c.detail) for c in resp.candidates] == [("numbers", "48231 vs 48213")]
    assert not resp.HasField("answer")

    resp = await cache.semantic("acme", chat("Don't cancel my order 48213"), near(v, 0.97))
    assert resp.reason == "refused: negation (don't vs none)"

    stats = await cache.stats("acme")
    assert stats.refusals_by_check["numbers"] == 1
    assert stats.refusals_by_check["negation"] == 1
    assert stats.refusals_by_check["scope"] == 0
    assert stats.misses == 2 and stats.semantic_hits == 0


async def test_semantic_miss_below_threshold_and_without_candidates(cache: Cache) -> None:
    v = unit(3)
    resp = await cache.semantic("acme", chat("What is the tallest mountain?"), v)
    assert (resp.hit, resp.reason) == (False, "miss: no candidate")

    await cache.store("acme", chat("What is the tallest mountain?"), "Everest.", v)
    resp = await cache.semantic("acme", chat("What is the tallest mountain?"), near(v, 0.5))
    assert not resp.hit
    assert resp.reason == "miss: below threshold (best 0.500 < 0.700)"
    assert [c.verdict for c in resp.candidates] == ["below_threshold"]


async def test_a_question_longer_than_the_semantic_tier_takes_is_served_by_the_exact_tier_only(
        cache: Cache) -> None:
    """The verifier's cost grows with the question (~4 s of the cache's event loop for 500 KB, found by probing
    the edges), and the embedding reads only its first ~256 tokens: past WEIR_CACHE_SEMANTIC_MAX_CHARS (2,000)
    a question is neither searched nor stored semantically."""
    v = unit(4)
    long_question = "Why does my pump cycle so often? " + "The pressure tank reads 38 psi. " * 70
    assert len(long_question) > 2000
    stored = await cache.store("acme", chat(long_question), "Check the precharge.", v)
    assert stored.stored and stored.reason.startswith("stored: exact; semantic skipped: question of ")
    resp = await cache.semantic("acme", chat(long_question), v)
    assert not resp.hit and not resp.candidates
    assert resp.reason.startswith(f"miss: question of {len(long_question)} characters is over the semantic tier")
    assert (await cache.exact("acme", chat(long_question))).answer.content == "Check the precharge."
    assert (await cache.stats("acme")).semantic_entries == 0


async def test_multi_turn_same_last_question_after_different_turns_does_not_match(cache: Cache) -> None:
    v = unit(4)
    paris = (("user", "Tell me about Paris."), ("assistant", "Paris is the capital of France."))
    rome = (("user", "Tell me about Rome."), ("assistant", "Rome is the capital of Italy."))
    await cache.store("acme", chat("What is its population?", history=paris), "About 2.1 million.", v)

    other = await cache.semantic("acme", chat("What is its population?", history=rome), v)
    assert (other.hit, other.reason) == (False, "miss: no candidate")
    assert not (await cache.exact("acme", chat("What is its population?", history=rome))).hit

    same = await cache.semantic("acme", chat("What's its population?", history=paris), near(v, 0.95))
    assert same.hit and same.answer.content == "About 2.1 million."


async def test_no_cross_tenant_hits(cache: Cache) -> None:
    v = unit(5)
    req = chat("What is our refund policy?")
    a = await cache.store("tenant-a", req, "A: 30 days.", v)
    b = await cache.store("tenant-b", req, "B: no refunds.", v)
    assert a.entry_id != b.entry_id

    for tenant, content, entry in (("tenant-a", "A: 30 days.", a.entry_id), ("tenant-b", "B: no refunds.", b.entry_id)):
        exact = await cache.exact(tenant, req)
        assert exact.hit and exact.answer.content == content
        sem = await cache.semantic(tenant, req, v)
        assert sem.hit and sem.answer.content == content
        assert [c.entry_id for c in sem.candidates] == [entry]

    # a tenant with nothing stored sees nothing, even for the identical question and vector
    assert not (await cache.exact("tenant-c", req)).hit
    assert (await cache.semantic("tenant-c", req, v)).reason == "miss: no candidate"
    # a tenant name that only differs in case is another tenant
    assert not (await cache.exact("Tenant-A", req)).hit

    # removing one tenant's entries leaves the other's alone
    removed = await cache.stub.Invalidate(pb.InvalidateRequest(tenant="tenant-a", all=True))
    assert removed.removed == 1
    assert not (await cache.semantic("tenant-a", req, v)).hit
    assert (await cache.semantic("tenant-b", req, v)).answer.content == "B: no refunds."


async def test_ttl_expiry(cache: Cache) -> None:
    v = unit(6)
    req = chat("What time is it in Tokyo?")
    short = await cache.store("acme", req, "Late.", v, ttl_seconds=1)
    await cache.store("acme", chat("What is the capital of Japan?"), "Tokyo.", unit(7))  # default TTL
    assert (await cache.exact("acme", req)).hit
    assert (await cache.semantic("acme", req, v)).hit
    assert (await cache.stats("acme")).exact_entries == 2

    await asyncio.sleep(1.3)
    assert (await cache.exact("acme", req)).reason == "miss"
    sem = await cache.semantic("acme", req, v)
    assert not sem.hit
    assert [c.entry_id for c in sem.candidates if c.entry_id == short.entry_id] == []
    stats = await cache.stats("acme")
    assert (stats.exact_entries, stats.semantic_entries) == (1, 1)


async def test_invalidate_by_entry_model_and_all(cache: Cache) -> None:
    reqs = [chat(f"Question number {i}?") for i in range(4)]
    vecs = [unit(10 + i) for i in range(4)]
    e0 = await cache.store("acme", reqs[0], "zero", vecs[0], model="model-x")
    await cache.store("acme", reqs[1], "one", vecs[1], model="model-x")
    await cache.store("acme", reqs[2], "two", vecs[2], model="model-y")
    await cache.store("acme", reqs[3], "three", model="model-y")  # exact tier only
    await cache.store("other", reqs[1], "other one", vecs[1], model="model-x")

    async def inv(**scope: object) -> int:
        return (await cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme", **scope))).removed  # type: ignore[arg-type]

    assert await inv(entry_id=e0.entry_id) == 1
    assert not (await cache.exact("acme", reqs[0])).hit
    assert not (await cache.semantic("acme", reqs[0], vecs[0])).hit
    assert (await cache.exact("acme", reqs[1])).hit
    assert await inv(entry_id=e0.entry_id) == 0

    assert await inv(model="model-x") == 1
    assert not (await cache.exact("acme", reqs[1])).hit
    assert not (await cache.semantic("acme", reqs[1], vecs[1])).hit
    assert (await cache.semantic("acme", reqs[2], vecs[2])).hit
    assert (await cache.semantic("other", reqs[1], vecs[1])).hit  # another tenant's model-x entry stays

    assert await inv(all=True) == 2
    assert not (await cache.exact("acme", reqs[2])).hit
    assert not (await cache.exact("acme", reqs[3])).hit
    assert not (await cache.semantic("acme", reqs[2], vecs[2])).hit
    stats = await cache.stats("acme")
    assert (stats.exact_entries, stats.semantic_entries) == (0, 0)
    assert (await cache.stats("other")).exact_entries == 1


async def test_stats_counters_per_tenant_and_total(cache: Cache) -> None:
    v = unit(20)
    req = chat("How many legs does a spider have?")
    await cache.store("acme", req, "Eight.", v)
    await cache.store("globex", chat("Name a primary colour"), "Red.")
    await cache.exact("acme", req)  # exact hit
    await cache.exact("acme", chat("Unknown question"))  # miss
    await cache.semantic("acme", chat("How many legs do spiders have?"), near(v, 0.95))  # semantic hit
    await cache.semantic("acme", chat("How many legs do most spiders have?"), near(v, 0.9))  # scope
    await cache.exact("globex", chat("Name a primary colour"))  # exact hit

    acme = await cache.stats("acme")
    assert (acme.exact_entries, acme.semantic_entries) == (1, 1)
    assert (acme.exact_hits, acme.semantic_hits, acme.misses) == (1, 1, 2)
    assert acme.refusals_by_check["scope"] == 1

    total = await cache.stats()
    assert (total.exact_entries, total.semantic_entries) == (2, 1)
    assert (total.exact_hits, total.semantic_hits, total.misses) == (2, 1, 2)


async def test_capacity_evicts_the_oldest_entries(start_cache: StartCache) -> None:
    cache = await start_cache({"WEIR_CACHE_MAX_ENTRIES_PER_TENANT": "3"})
    reqs = [chat(f"Capacity question {i}?") for i in range(5)]
    vecs = [unit(30 + i) for i in range(5)]
    for i in range(5):
        await cache.store("acme", reqs[i], f"answer {i}", vecs[i])
    await cache.store("other", reqs[0], "other answer 0", vecs[0])

    for i in (0, 1):
        assert not (await cache.exact("acme", reqs[i])).hit
        assert (await cache.semantic("acme", reqs[i], vecs[i])).reason.startswith("miss")
    for i in (2, 3, 4):
        assert (await cache.exact("acme", reqs[i])).answer.content == f"answer {i}"
        assert (await cache.semantic("acme", reqs[i], vecs[i])).hit
    stats = await cache.stats("acme")
    assert (stats.exact_entries, stats.semantic_entries) == (3, 3)
    assert (await cache.exact("other", reqs[0])).hit

    # storing an existing entry again refreshes it instead of adding one
    await cache.store("acme", reqs[2], "answer 2 again", vecs[2])
    await cache.store("acme", reqs[0], "answer 0 back", vecs[0])
    assert (await cache.exact("acme", reqs[2])).answer.content == "answer 2 again"
    assert not (await cache.exact("acme", reqs[3])).hit
    assert (await cache.stats("acme")).exact_entries == 3


async def test_bad_input_is_invalid_argument_with_field_violations(cache: Cache) -> None:
    req = chat("Anything?")
    v = unit(40)

    async def violations(aw: object) -> list[str]:
        err = await call_error(aw)  # type: ignore[arg-type]
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        return [f for f, _ in err.field_violations]

    store = cache.stub.Store
    assert await violations(store(pb.StoreRequest(request=req, answer=answer("x")))) == ["tenant"]
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("")))) == [
        "answer.content"]
    assert await violations(store(pb.StoreRequest(tenant="acme", answer=answer("x")))) == ["request.messages"]
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"), ttl_seconds=-1))) == [
        "ttl_seconds"]
    short = embedding(v)
    short.vector = short.vector[:-4]
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"),
                                                  embedding=short))) == ["embedding.vector"]
    nameless = embedding(v, model_id="")
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"),
                                                  embedding=nameless))) == ["embedding.model_id"]
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"),
                                                  embedding=embedding(0 * v)))) == ["embedding.vector"]

    # once a model's collection exists, its dimension is fixed
    await cache.store("acme", req, "x", v)
    assert await violations(store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"),
                                                  embedding=embedding(v[:128])))) == ["embedding.dim"]
    assert await violations(cache.semantic("acme", req, v[:128])) == ["embedding.dim"]
    assert await violations(cache.stub.LookupSemantic(pb.LookupSemanticRequest(tenant="acme", request=req))) == [
        "embedding.model_id", "embedding.dim"]
    assert await violations(cache.stub.LookupExact(pb.LookupExactRequest(tenant=" ", request=req))) == ["tenant"]
    # JSON fields are checked before anything reads them (found by fuzzing: they once ended in INTERNAL)
    malformed = chat("Anything?")
    malformed.tools_json, malformed.sampling.temperature = "junk", 9.0
    assert await violations(cache.stub.LookupExact(pb.LookupExactRequest(tenant="acme", request=malformed))) == [
        "request.tools_json", "request.sampling.temperature"]
    assert await violations(store(pb.StoreRequest(tenant="acme", request=malformed, answer=answer("x")))) == [
        "request.tools_json", "request.sampling.temperature"]
    assert await violations(cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme"))) == ["scope"]
    assert await violations(cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme", entry_id="nope"))) == [
        "entry_id"]
    assert await violations(cache.stub.GetStats(pb.GetStatsRequest(tenant="bad\ntenant"))) == ["tenant"]


async def test_dead_redis_degrades_exact_lookups_quickly(start_cache: StartCache) -> None:
    cache = await start_cache({"WEIR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    req = chat("Is anybody there?")
    for _ in range(3):
        resp = await cache.exact("acme", req)  # the stub's 5 s deadline would fail a hanging call
        assert (resp.hit, resp.reason) == (False, "degraded: redis unavailable")
    stored = await cache.stub.Store(pb.StoreRequest(tenant="acme", request=req, answer=answer("x"),
                                                    embedding=embedding(unit(50))), timeout=5)
    assert (stored.stored, stored.reason) == (False, "degraded: redis unavailable")
    # the semantic tier does not need Redis
    assert (await cache.semantic("acme", req, unit(50))).reason == "miss: no candidate"
    err = await call_error(cache.stats())
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert cache.proc.alive()


async def test_redis_outage_degrades_then_recovers(start_cache: StartCache, tmp_path: Path) -> None:
    redis = start_local_redis(tmp_path / "own-redis")
    try:
        cache = await start_cache({"WEIR_REDIS_URL": redis.url, "WEIR_CACHE_REDIS_RETRY_AFTER_S": "0.2"})
        req = chat("Where is the Eiffel Tower?")
        await cache.store("acme", req, "Paris.")
        assert (await cache.exact("acme", req)).hit

        redis.stop()
        for _ in range(3):
            assert (await cache.exact("acme", req)).reason == "degraded: redis unavailable"

        redis = start_local_redis(tmp_path / "own-redis", port=redis.port)  # back, empty
        await asyncio.sleep(0.3)
        assert (await cache.exact("acme", req)).reason == "miss"
        await cache.store("acme", req, "Paris, France.")
        assert (await cache.exact("acme", req)).answer.content == "Paris, France."
    finally:
        redis.stop()


async def test_dead_milvus_degrades_the_semantic_tier_and_stores_exactly(start_cache: StartCache) -> None:
    cache = await start_cache({"WEIR_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
                               "WEIR_CACHE_MILVUS_TIMEOUT_S": "0.2"})
    v = unit(60)
    req = chat("What is the speed of light?")
    resp = await cache.semantic("acme", req, v)
    assert not resp.hit and resp.reason.startswith("degraded: milvus unavailable")
    stored = await cache.store("acme", req, "299,792 km/s", v)
    assert stored.reason.startswith("stored: exact; semantic degraded: milvus unavailable")
    assert (await cache.exact("acme", req)).answer.content == "299,792 km/s"
    stats = await cache.stats("acme")
    assert (stats.exact_entries, stats.semantic_entries) == (1, 0)
    err = await call_error(cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme", all=True)))
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "MILVUS_UNAVAILABLE"
    assert not (await cache.exact("acme", req)).hit  # the exact tier was cleared all the same


async def test_semantic_entries_survive_a_restart(start_cache: StartCache) -> None:
    first = await start_cache()
    v = unit(70)
    req = chat("Who wrote Dune?")
    await first.store("acme", req, "Frank Herbert.", v)
    assert first.proc.stop() == 0

    second = await start_cache()
    resp = await second.semantic("acme", chat("who wrote dune"), near(v, 0.9))
    assert resp.hit and resp.answer.content == "Frank Herbert."


async def test_the_context_index_lists_contexts_with_semantic_entries(cache: Cache, redis_url: str) -> None:
    """Store keeps ``ctx:<tenant>`` (weir/exact_cache.py) for readers that skip a search in an empty context;
    invalidating all of a tenant's entries drops it."""
    import redis.asyncio as aioredis

    from weir import chat as chat_keys
    from weir import exact_cache

    r = aioredis.Redis.from_url(redis_url)
    try:
        key = exact_cache.context_index_key("weir:cache:", "ctx-t")
        with_vector = chat("Which gate does the Lisbon flight leave from?", system="You are an airport desk.")
        exact_only = chat("Which gate does the Porto flight leave from?", system="Another desk.")
        await cache.store("ctx-t", with_vector, "Gate 12.", unit(7), ttl_seconds=600)
        await cache.store("ctx-t", exact_only, "Gate 14.")  # no embedding: nothing to search for
        scored = cast(list[tuple[bytes, float]], await r.zrange(key, 0, -1, withscores=True))
        listed = {m.decode(): s for m, s in scored}
        assert list(listed) == [chat_keys.context_key("ctx-t", with_vector)]
        expires = listed[chat_keys.context_key("ctx-t", with_vector)]
        assert 0 < expires - time.time() * 1000 <= 600_000
        await cache.stub.Invalidate(pb.InvalidateRequest(tenant="ctx-t", all=True))
        assert not await r.exists(key)
    finally:
        await r.aclose()


async def test_concurrent_lookups_share_searches_and_each_gets_its_own_answer(start_cache: StartCache) -> None:
    await check_concurrent_lookups(await start_cache({"WEIR_METRICS_PORT": "0"}))


async def test_rows_stored_within_the_write_interval_go_to_milvus_together(start_cache: StartCache) -> None:
    cache = await start_cache({"WEIR_METRICS_PORT": "0", "WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS": "1000"})
    await cache.store("acme", chat("Warm-up question"), "warm", unit(500))  # creates the collection
    before = cache_metrics(cache.proc)

    async def store(i: int) -> pb.StoreResponse:
        await asyncio.sleep(0.01 * i)  # spread over 100 ms: most arrive after the first write has returned
        return await cache.store("acme", chat(f"Spread question {i}"), f"answer {i}", unit(501 + i))

    stored = await asyncio.gather(*(store(i) for i in range(10)))
    assert all(s.reason == "stored: exact+semantic" for s in stored)
    after = cache_metrics(cache.proc)
    rows = after["weir_cache_milvus_written_rows_total"] - before["weir_cache_milvus_written_rows_total"]
    calls = after["weir_cache_milvus_writes_total"] - before["weir_cache_milvus_writes_total"]
    assert rows == 10 and calls <= 2  # all ten arrive within one interval of the warm-up write: one call
    for i in (0, 9):
        assert (await cache.semantic("acme", chat(f"Spread question {i}"), unit(501 + i))).hit
