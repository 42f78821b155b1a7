"""The cache on the bundled Milvus standalone server (what `weir up` runs): the same code as on Milvus Lite,
HNSW index, one partition per tenant. The server starts once per session."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.cache.semantic import Row, SemanticTier
from services.cache.settings import CacheSettings
from tests.cache.conftest import MODEL_ID, StartCache, chat, check_concurrent_lookups, embedding, near, unit
from tests.conftest import kill_launcher, wait_for
from weir.cache.v1 import cache_service_pb2 as pb
from weir.kit import supervisor
from weir.kit.config import load


async def test_identical_questions_of_different_tenants_never_cross(start_cache: StartCache,
                                                                    server_env: dict[str, str]) -> None:
    cache = await start_cache(server_env)
    v = unit(11)
    req = chat("What is our refund policy?")
    tenants = {f"tenant-{i}": f"Policy of tenant {i}." for i in range(5)}
    entries = {t: (await cache.store(t, req, content, v)).entry_id for t, content in tenants.items()}
    assert len(set(entries.values())) == len(tenants)
    for tenant, content in tenants.items():
        for probe in (v, near(v, 0.97)):
            sem = await cache.semantic(tenant, chat("what's our refund policy"), probe)
            assert sem.hit, sem.reason
            assert sem.answer.content == content
            assert [c.entry_id for c in sem.candidates] == [entries[tenant]]  # only its own row is a candidate
    assert (await cache.semantic("tenant-none", req, v)).reason == "miss: no candidate"
    stats = await cache.stats("tenant-0")
    assert (stats.exact_entries, stats.semantic_entries, stats.semantic_hits) == (1, 1, 2)
    assert (stats.semantic_lookups, stats.semantic_hit_rate) == (2, 1.0)


async def test_verification_and_invalidation_on_the_server(start_cache: StartCache,
                                                           server_env: dict[str, str]) -> None:
    cache = await start_cache(server_env)
    v, w = unit(12), unit(13)
    await cache.store("acme", chat("Cancel my order 48213"), "Order 48213 cancelled.", v, model="fake-small")
    await cache.store("acme", chat("How do I reset my password?"), "Use the reset link.", w, model="fake-large")

    refused = await cache.semantic("acme", chat("Don't cancel order 48231"), near(v, 0.97))
    assert (refused.hit, refused.reason) == (False, "refused: numbers (48231 vs 48213)")
    assert (await cache.semantic("acme", chat("how can i reset my password"), near(w, 0.93))).hit

    removed = await cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme", model="fake-large"))
    assert removed.removed == 1
    assert not (await cache.semantic("acme", chat("how can i reset my password"), near(w, 0.93))).hit
    assert (await cache.exact("acme", chat("Cancel my order 48213"))).hit
    assert (await cache.stub.Invalidate(pb.InvalidateRequest(tenant="acme", all=True))).removed == 1
    assert (await cache.semantic("acme", chat("Cancel my order 48213"), v)).reason == "miss: no candidate"



async def test_concurrent_lookups_share_searches_and_each_gets_its_own_answer(
        start_cache: StartCache, server_env: dict[str, str]) -> None:
    await check_concurrent_lookups(await start_cache({**server_env, "WEIR_METRICS_PORT": "0"}))


async def test_searches_and_writes_on_a_server_go_over_grpc_aio_and_find_what_pymilvus_finds(
        server_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a Milvus server a search or a write after the first of its collection and partition skips MilvusClient
    (a pool thread per call): same candidates, and a Session-consistency search still sees this process' own
    writes, whichever way they went."""
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    tier = SemanticTier(load(CacheSettings))
    assert await tier.connect()
    try:
        vectors = [unit(30 + i) for i in range(3)]
        rows = [Row(entry_id=f"e{i}", tenant="acme", context_key="ctx", model="fake-small", question=f"Question {i}?",
                    answer=f"answer {i}".encode(), created_ms=0, expires_ms=2**62, vector=v)
                for i, v in enumerate(vectors)]
        for row in rows:
            await tier.upsert(row, MODEL_ID)
        first = await tier.search("acme", "ctx", MODEL_ID, near(vectors[0], 0.97))  # learns the collection
        assert tier._raw is not None

        def no_pool(*args: object) -> None:
            raise AssertionError("searched through the pool")

        monkeypatch.setattr(tier, "_search", no_pool)
        monkeypatch.setattr(tier, "_upsert", no_pool)
        again = await tier.search("acme", "ctx", MODEL_ID, near(vectors[0], 0.97))
        assert [(c.entry_id, c.question, c.answer) for c in again] == [(c.entry_id, c.question, c.answer)
                                                                       for c in first]
        assert again[0].entry_id == "e0" and again[0].answer == b"answer 0"
        assert [round(c.similarity, 5) for c in again] == [round(c.similarity, 5) for c in first]
        await tier.upsert(replace(rows[2], entry_id="e9", question="Written just now?", vector=unit(40)), MODEL_ID)
        fresh = await tier.search("acme", "ctx", MODEL_ID, unit(40))
        assert fresh and fresh[0].entry_id == "e9" and fresh[0].answer == b"answer 2"
        # An upsert of an existing entry replaces it (no second row), over grpc.aio as well.
        await tier.upsert(replace(rows[2], entry_id="e9", question="Rewritten?", answer=b"new", vector=unit(40)),
                          MODEL_ID)
        rewritten = await tier.search("acme", "ctx", MODEL_ID, unit(40))
        assert [(c.entry_id, c.question, c.answer) for c in rewritten if c.entry_id == "e9"] == [
            ("e9", "Rewritten?", b"new")]
        assert await tier.search("acme", "other-context", MODEL_ID, unit(40)) == []
        # A new tenant's first write creates its partition through the pool; its next write skips it.
        monkeypatch.undo()
        for key, value in server_env.items():
            monkeypatch.setenv(key, value)
        await tier.upsert(replace(rows[0], tenant="globex", entry_id="g1"), MODEL_ID)
        monkeypatch.setattr(tier, "_upsert", no_pool)
        await tier.upsert(replace(rows[1], tenant="globex", entry_id="g2"), MODEL_ID)
        found = await tier.search("globex", "ctx", MODEL_ID, vectors[1])
        assert found[0].entry_id == "g2" and {c.entry_id for c in found} == {"g1", "g2"}
    finally:
        await tier.close()


async def test_requests_sent_over_grpc_aio_are_byte_for_byte_what_pymilvus_builds(
        server_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The grpc.aio path builds its Search and Upsert requests without pymilvus' Prepare (a copied template, columns
    filled directly), and they must be exactly what Prepare makes: for the schema the server describes, several
    vectors, any filter, and a template used again with other arguments."""
    from pymilvus.client import ts_utils
    from pymilvus.client.prepare import Prepare

    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    tier = SemanticTier(load(CacheSettings))
    assert await tier.connect()
    try:
        rows = [Row(entry_id=f"b{i}", tenant="acme", context_key="ctx", model="fake-small", question=f"Q {i} é?",
                    answer=f"answer {i}".encode(), created_ms=i, expires_ms=2**62 - i, vector=unit(60 + i))
                for i in range(3)]
        await tier.upsert(rows[0], MODEL_ID)
        raw, name = tier._raw, tier.collection_name(MODEL_ID)
        assert raw is not None and name in tier._schemas
        schema, partition = tier._schemas[name], tier.partition_name("acme")
        params = {"metric_type": "COSINE", "params": {"ef": 64}}
        upserts, searches = [], []
        for batch in ([rows[0]], rows):
            entities = tier._entities(batch)
            upserts.append((entities, Prepare.row_upsert_param(
                name, entities, partition, schema.get("fields"), schema.get("struct_array_fields", []),
                enable_dynamic=False, schema_timestamp=schema.get("update_timestamp", 0))))
        for i, (vectors, expr) in enumerate([([unit(1)], 'tenant == "acme" and expires > 5'),
                                             ([unit(2), unit(3), unit(4)], 'tenant == "a\\"b" and expires > 7'),
                                             ([unit(5)], "")]):
            consistency: dict[str, object] = {}
            default = ts_utils.construct_guarantee_ts(name, consistency, raw._endpoint, "")
            if i == 1:
                consistency["guarantee_timestamp"] = 12345  # a timestamp of this process' own last write
            searches.append((vectors, expr, default, consistency, Prepare.search_requests_with_expr(
                name, "vector", params, 5, data=vectors, expr=expr, partition_names=[partition],
                output_fields=["tenant", "context_key", "question", "answer", "expires"],
                use_default_consistency=default, **consistency)))

        def same(built: Any, expected: Any) -> bool:
            return bool(built.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True))

        vectors, expr, default, consistency, expected = searches[0]  # builds the template, with Prepare
        assert same(raw.search_request(name, partition, vectors, expr, 5, params, default, consistency), expected)

        def not_prepare(*args: object, **kwargs: object) -> None:
            raise AssertionError("built with Prepare")

        monkeypatch.setattr(Prepare, "search_requests_with_expr", not_prepare)
        monkeypatch.setattr(Prepare, "row_upsert_param", not_prepare)
        for vectors, expr, default, consistency, expected in searches:
            assert same(raw.search_request(name, partition, vectors, expr, 5, params, default, consistency), expected)
        assert len(raw._templates) == 1  # the searches shared one template
        for entities, expected in upserts:
            assert same(raw.upsert_request(name, partition, entities, schema), expected)
    finally:
        await tier.close()


async def test_a_lookup_does_not_wait_while_the_first_store_creates_the_collection(
        start_cache: StartCache, server_env: dict[str, str]) -> None:
    """The first store of an embedding model creates its collection (seconds on a server); a lookup meanwhile finds
    nothing within its deadline instead of waiting for the creation (the gateway gives a lookup 2 s)."""
    cache = await start_cache(server_env)
    v = unit(50)
    store = asyncio.ensure_future(cache.store("acme", chat("How do I rotate my API key?"), "Use the console.", v))
    await asyncio.sleep(0.3)  # the write is out: the collection is being created
    lookup = await cache.stub.LookupSemantic(pb.LookupSemanticRequest(
        tenant="acme", request=chat("how can i rotate my api key"), embedding=embedding(near(v, 0.97))), timeout=0.5)
    assert not store.done(), "the collection was created before the lookup: nothing was tested"
    assert (lookup.hit, lookup.reason) == (False, "miss: no candidate")
    assert (await store).reason == "stored: exact+semantic"


def test_the_bundled_milvus_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """`weir up` (or a test) killed outright leaves no Milvus behind: its launcher process notices that the
    process that started it is gone and stops Milvus, as every service started through the supervisor does."""
    pids = kill_launcher(
        "import time\n"
        "from pathlib import Path\n"
        "from services.cache.milvus_local import start_milvus\n"
        f"p = start_milvus(Path({str(tmp_path / 'milvus')!r}), log_dir=Path({str(tmp_path)!r}))\n"
        "print(p.popen.pid, p.info['pid'], flush=True)\n"
        "time.sleep(300)\n"
    )
    assert len(pids) == 2  # the Python launcher and Milvus itself
    wait_for(lambda: not any(supervisor.process_running(p) for p in pids), timeout=45)
    assert "the launcher is gone: stopping" in (tmp_path / "milvus.log").read_text()


def test_the_bundled_milvus_starts_again_when_a_port_it_chose_is_taken_first(tmp_path: Path) -> None:
    """Milvus binds its dozen ports one component at a time, seconds after they were chosen: a port taken
    meanwhile made it panic ("address already in use") and `weir up` fail. The launcher now starts it again on
    new ports. Here the first choice includes a port the launcher itself holds."""
    ready = tmp_path / "ready"
    code = (
        "import socket, sys\n"
        "from pathlib import Path\n"
        "import services.cache.milvus_local as m\n"
        "real = m.free_ports_outside_ephemeral\n"
        "held = socket.socket(); held.bind(('127.0.0.1', 0)); held.listen()\n"
        "calls = []\n"
        "def first_taken(n):\n"
        "    ports = real(n)\n"
        "    calls.append(n)\n"
        "    if len(calls) == 1:\n"
        "        ports[3] = held.getsockname()[1]  # the query coordinator's\n"
        "    return ports\n"
        "m.free_ports_outside_ephemeral = first_taken\n"
        f"sys.exit(m.run(Path({str(tmp_path / 'milvus')!r}), 0))\n"
    )
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "WEIR_READY_FILE": str(ready)},
                                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=120)
        assert ready.exists(), log.read_text()
        assert "starting again (1)" in log.read_text()
        assert b"address already in use" in (tmp_path / "milvus" / "logs" / "milvus.out").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
