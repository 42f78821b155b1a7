"""What one semantic-tier write costs the cache process: MilvusClient in a pool thread against grpc.aio.

    .venv/bin/python -m bench.milvus_write_bench [--writes 300] [--rounds 2] [--builds 3000]

Starts the bundled Milvus standalone (as `weir up` runs it) and, in this process, the cache's SemanticTier on
it. Each round writes `--writes` one-row upserts one after another (WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS=0, so
nothing is batched: what a lone miss costs) both ways: through MilvusClient in the pool (the path a
collection's and a tenant's first write takes, and every write on Milvus Lite) and over grpc.aio from the event
loop (`_AsyncMilvus.upsert`, every later write on a server). Prints this process' CPU-ms (time.process_time)
and the wall time per write; the Milvus server's own cost is not in it.

Then what building a request costs, in this process, without sending it: pymilvus' `Prepare` against
`_AsyncMilvus`' own builders (a copied search template, an upsert's columns filled directly), for a search of one
vector and a one-row upsert of the collection the server describes (µs of CPU per request, `--builds` each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.cache.milvus_local import start_milvus
from services.cache.semantic import Row, SemanticTier
from services.cache.settings import CacheSettings
from weir.kit.config import load


async def one_way(uri: str, pooled: bool, writes: int, rng: np.random.Generator) -> tuple[float, float]:
    os.environ.update({"WEIR_MILVUS_URI": uri, "WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS": "0",
                       "WEIR_CACHE_MILVUS_COLLECTION_PREFIX": "wb_pool" if pooled else "wb_aio"})
    tier = SemanticTier(load(CacheSettings))
    assert await tier.connect()

    def row(i: int) -> Row:
        v = rng.standard_normal(384).astype(np.float32)
        return Row(entry_id=f"e{i}", tenant="acme", context_key="ctx", model="m", question=f"Question {i}?",
                   answer=b"x" * 300, created_ms=0, expires_ms=2**62, vector=v / np.linalg.norm(v))

    await tier.upsert(row(-1), "bench-model")  # creates the collection and the partition (always pooled)
    raw = tier._raw
    if pooled:
        tier._raw = None  # as on Milvus Lite: every write through MilvusClient
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(writes):
        await tier.upsert(row(i), "bench-model")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if raw is not None and tier._raw is None:
        await raw.close()
    await tier.close()
    return cpu * 1000 / writes, wall * 1000 / writes


async def builders(uri: str, builds: int, rounds: int) -> None:
    """CPU per request built, pymilvus' Prepare against _AsyncMilvus' builders, alternating."""
    from pymilvus.client import ts_utils
    from pymilvus.client.prepare import Prepare

    os.environ.update({"WEIR_MILVUS_URI": uri, "WEIR_CACHE_MILVUS_COLLECTION_PREFIX": "wb_build"})
    tier = SemanticTier(load(CacheSettings))
    assert await tier.connect()
    v = np.full(384, 384 ** -0.5, dtype=np.float32)
    row = Row(entry_id="e" * 40, tenant="acme", context_key="c" * 32, model="m",
              question="What is the capital of Kenya?", answer=b"x" * 300, created_ms=0, expires_ms=2**62, vector=v)
    await tier.upsert(row, "bench-model")  # creates the collection; the server describes its schema
    raw, name = tier._raw, tier.collection_name("bench-model")
    assert raw is not None, "not a Milvus server"
    schema, partition, entities = tier._schemas[name], tier.partition_name("acme"), tier._entities([row])
    params = {"metric_type": "COSINE", "params": {"ef": 64}}
    expr = f'tenant == "acme" and context_key == "{"c" * 32}" and expires > 1765000000000'
    fields = ["tenant", "context_key", "question", "answer", "expires"]

    def prepare() -> None:
        consistency: dict[str, Any] = {}
        default = ts_utils.construct_guarantee_ts(name, consistency, "", "")
        Prepare.search_requests_with_expr(name, "vector", params, 5, data=[v], expr=expr, partition_names=[partition],
                                          output_fields=fields, use_default_consistency=default, **consistency)

    def own() -> None:
        consistency: dict[str, Any] = {}
        default = ts_utils.construct_guarantee_ts(name, consistency, "", "")
        raw.search_request(name, partition, [v], expr, 5, params, default, consistency)

    candidates: list[tuple[str, Callable[[], object]]] = [
        ("search: Prepare", prepare),
        ("search: _AsyncMilvus", own),
        ("upsert: Prepare", lambda: Prepare.row_upsert_param(
            name, entities, partition, schema.get("fields"), [], enable_dynamic=False,
            schema_timestamp=schema.get("update_timestamp", 0))),
        ("upsert: _AsyncMilvus", lambda: raw.upsert_request(name, partition, entities, schema)),
    ]
    print(f"\n{'round':>5}  {'request built':<28} {'CPU-us / request':>17}")
    for k in range(rounds):
        for label, build in candidates:
            build()
            cpu = time.process_time()
            for _ in range(builds):
                build()
            print(f"{k + 1:>5}  {label:<28} {(time.process_time() - cpu) * 1e6 / builds:>17.1f}")
    await tier.close()


async def run(uri: str, writes: int, rounds: int, builds: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'round':>5}  {'path':<28} {'CPU-ms / write':>15} {'ms / write':>11}")
    for k in range(rounds):
        for pooled in (True, False):
            cpu, wall = await one_way(uri, pooled, writes, rng)
            path = "MilvusClient in the pool" if pooled else "grpc.aio (_AsyncMilvus)"
            print(f"{k + 1:>5}  {path:<28} {cpu:>15.2f} {wall:>11.2f}")
    await builders(uri, builds, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--builds", type=int, default=3000, help="requests built per builder and round")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="weir-write-bench-"))
    proc = start_milvus(state / "milvus", log_dir=state / "logs")
    try:
        asyncio.run(run(str(proc.info["uri"]), args.writes, args.rounds, args.builds))
    finally:
        proc.stop(timeout=20)


if __name__ == "__main__":
    main()
