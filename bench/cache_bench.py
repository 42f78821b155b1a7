"""Cache lookup latency through the gRPC service, and memory, as the semantic tier grows.

    .venv/bin/python -m bench.cache_bench [--milvus server|lite|URI] [--sizes 1000,10000,100000,1000000]
                                          [--lookups 500] [--rpc-fill-max 20000] [--judge on|off]
                                          [--compare-judge]

Starts a private redis-server, the Milvus backend (`server`: the bundled Milvus standalone as its own
process, what `weir up` runs; `lite`: Milvus Lite inside the cache process; or any Milvus URI) and
`python -m services.cache`. For each size it fills ONE tenant with that many entries, all in one
conversation context (the worst case: every row passes the context filter), with synthetic 384-d unit
vectors. Up to --rpc-fill-max entries go through Store (both tiers, as in production); beyond that the
rows are inserted straight into the cache's own collection and tenant partition with pymilvus in large
batches (Store costs a Redis script and a Milvus upsert each: a million of them would take an hour on
two cores), and the fill waits until Milvus has indexed them. Then it times, one call at a time from a
grpc.aio client:
- LookupSemantic hits: a near vector (cosine 0.95) and a paraphrase, so search + the full verifier run;
- LookupSemantic misses: a random vector (nothing above the threshold, or refused);
- LookupExact hits (entries stored through Store) and misses.
Embedding time is excluded (vectors are precomputed). The verifier's paraphrase judge is included: with
`--judge on` (the default, as `weir up` runs the cache) an embedder with the judge is started and the cache
asks it about every candidate the rules accept (its veto), one cross-encoder run per new pair; each hit
looks up a different entry, so the cache's LRU of judge scores does not answer for it. `--judge off` measures
search + rules alone. RSS is the resident memory of the cache process and of the Milvus process (for Milvus
Lite they are the same process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.cache import milvus_local
from services.cache.semantic import SemanticTier
from services.cache.settings import CacheSettings
from weir import chat
from weir.cache.v1 import cache_service_pb2 as pb
from weir.cache.v1 import cache_service_pb2_grpc as pb_grpc
from weir.common.v1 import types_pb2
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.config import load
from weir.kit.redis_local import start_local_redis

DIM = 384
MODEL_ID = "all-minilm-l6-v2@bench"
TENANT = "bench"
DIRECT_BATCH = 10_000


def request(text: str) -> types_pb2.ChatRequest:
    req = types_pb2.ChatRequest(model="fake-small")
    req.sampling.temperature = 0.0
    req.messages.add(role="user", content=text)
    return req


def stored_question(i: int) -> str:
    return f"How do I configure the retry policy of service {i} in production?"


def paraphrase(i: int) -> str:
    return f"How can I configure the retry policy for service {i} in production"


def embedding(v: np.ndarray) -> types_pb2.Embedding:
    return types_pb2.Embedding(vector=v.astype("<f4").tobytes(), dim=DIM, model_id=MODEL_ID)


def unit_rows(seed: int, start: int, n: int) -> np.ndarray:
    """Rows start..start+n-1 of a reproducible stream of random unit vectors."""
    m = np.random.default_rng([seed, start]).normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


@functools.lru_cache(maxsize=4)
def _block(start: int) -> np.ndarray:
    return unit_rows(0, start, DIRECT_BATCH)


def vector_of(i: int) -> np.ndarray:
    """Vector of entry i (blocks of DIRECT_BATCH rows are generated once)."""
    block = (i // DIRECT_BATCH) * DIRECT_BATCH
    row: np.ndarray = _block(block)[i - block]
    return row


def near(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.normal(size=DIM).astype(np.float32)
    u -= float(u @ v) * v
    u /= np.linalg.norm(u)
    w = cosine * v + np.sqrt(1 - cosine**2) * u
    out: np.ndarray = (w / np.linalg.norm(w)).astype(np.float32)
    return out


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def row(name: str, samples_ns: list[int]) -> str:
    p50, p99 = percentiles(samples_ns)
    mean = float(np.mean(samples_ns)) / 1e6
    return f"  {name:<40} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   mean {mean:7.2f} ms   n={len(samples_ns)}"


def judge_pairs(proc: supervisor.Process) -> str:
    """The cache's weir_cache_judge_pairs_total by outcome, so the output shows whether the judge really ran."""
    import urllib.request

    prefix = 'weir_cache_judge_pairs_total{outcome="'
    with urllib.request.urlopen(f"http://{proc.info['metrics']}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts = {line[len(prefix):].split('"')[0]: float(line.split()[-1])
              for line in text.splitlines() if line.startswith(prefix)}
    return ", ".join(f"{k} {v:.0f}" for k, v in counts.items() if v) or "none"


def outcome(resp: object) -> str:
    """hit, or the first word of a miss reason (miss, refused, degraded)."""
    if getattr(resp, "hit", False):
        return "hit"
    return str(getattr(resp, "reason", "")).split(":")[0] or "miss"


async def timed(calls: list[Callable[[], Awaitable[object]]]) -> tuple[list[int], Counter[str]]:
    samples, outcomes = [], Counter[str]()
    for call in calls:
        t0 = time.perf_counter_ns()
        resp = await call()
        samples.append(time.perf_counter_ns() - t0)
        outcomes[outcome(resp)] += 1
    return samples, outcomes


def report(name: str, result: tuple[list[int], Counter[str]]) -> str:
    samples, outcomes = result
    return row(name, samples) + "   " + " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))


def hit_requests(size: int, n: int, rng: np.random.Generator) -> list[pb.LookupSemanticRequest]:
    """`n` semantic hits (a paraphrase and a near vector of a stored entry), each of a different entry while the
    tier holds enough, so that no hit is answered by the judge's LRU (a repeated paraphrase would be)."""
    targets = [int(t) for t in rng.choice(size, size=n, replace=size < n)]
    return [pb.LookupSemanticRequest(tenant=TENANT, request=request(paraphrase(t)),
                                     embedding=embedding(near(vector_of(t), 0.95, rng))) for t in targets]


async def measure(stub: pb_grpc.CacheServiceAsyncStub, size: int, rpc_filled: int, lookups: int,
                  rng: np.random.Generator) -> list[int]:
    """Times each lookup kind over prebuilt requests (so only the call is timed); returns the semantic hits'."""
    sem_hits = hit_requests(size, lookups + 50, rng)
    sem_misses = [pb.LookupSemanticRequest(tenant=TENANT, request=request(f"Unrelated question {i}?"),
                                           embedding=embedding(v)) for i, v in enumerate(unit_rows(1, size, lookups))]
    exact_targets = [int(t) for t in rng.integers(0, rpc_filled, size=lookups)]
    ex_hits = [pb.LookupExactRequest(tenant=TENANT, request=request(stored_question(t))) for t in exact_targets]
    ex_misses = [pb.LookupExactRequest(tenant=TENANT, request=request(f"Never stored {i}")) for i in range(lookups)]

    def semantic(r: pb.LookupSemanticRequest) -> Callable[[], Awaitable[object]]:
        return lambda: stub.LookupSemantic(r, timeout=30)

    def exact(r: pb.LookupExactRequest) -> Callable[[], Awaitable[object]]:
        return lambda: stub.LookupExact(r, timeout=30)

    await timed([semantic(r) for r in sem_hits[lookups:]])  # warm-up
    hits = await timed([semantic(r) for r in sem_hits[:lookups]])
    print(report("LookupSemantic hit (search + verify)", hits))
    print(report("LookupSemantic miss (random vector)", await timed([semantic(r) for r in sem_misses])))
    print(report("LookupExact hit", await timed([exact(r) for r in ex_hits])))
    print(report("LookupExact miss", await timed([exact(r) for r in ex_misses])))
    return hits[0]


async def compare_judge(stubs: dict[str, pb_grpc.CacheServiceAsyncStub], size: int, lookups: int,
                        rng: np.random.Generator) -> None:
    """Semantic hits through two cache processes on the same collection, one asking the judge and one not,
    interleaved in blocks of 50 lookups so that the machine's moods (Milvus compacting, other jobs) fall on
    both alike: what the judge adds to a hit."""
    reqs = hit_requests(size, lookups * len(stubs), rng)
    results: dict[str, tuple[list[int], Counter[str]]] = {name: ([], Counter()) for name in stubs}
    block, k = 50, 0
    while k < len(reqs):
        for name, stub in stubs.items():
            got, seen = await timed([functools.partial(stub.LookupSemantic, r, timeout=30)
                                     for r in reqs[k:k + block]])
            k += block
            results[name][0].extend(got)
            results[name][1].update(seen)
    for name, result in results.items():
        print(report(f"  hit, {name}", result))


async def fill_rpc(stub: pb_grpc.CacheServiceAsyncStub, start: int, end: int, concurrency: int) -> Counter[str]:
    """Stores entries start..end-1 through Store with `concurrency` calls in flight."""
    next_i = start
    outcomes = Counter[str]()

    async def worker() -> None:
        nonlocal next_i
        while next_i < end:
            i = next_i
            next_i += 1
            resp = await stub.Store(pb.StoreRequest(
                tenant=TENANT, request=request(stored_question(i)),
                answer=pb.CachedAnswer(content=f"Set retries.max=3 for service {i}.", model="fake-small"),
                embedding=embedding(vector_of(i))), timeout=120)
            outcomes[resp.reason] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def fill_direct(settings: CacheSettings, start: int, end: int) -> None:
    """Inserts rows start..end-1 straight into the cache's collection and the tenant's partition."""
    from pymilvus import MilvusClient

    tier = SemanticTier(settings)
    name, partition = tier.collection_name(MODEL_ID), tier.partition_name(TENANT)
    client = MilvusClient(settings.resolved_milvus_uri)
    ctx = chat.context_key(TENANT, request(stored_question(0)))
    now = int(time.time() * 1000)
    block = start
    while block < end:
        n = min(end, (block // DIRECT_BATCH + 1) * DIRECT_BATCH) - block  # never across a generated block
        vecs = _block((block // DIRECT_BATCH) * DIRECT_BATCH)[block % DIRECT_BATCH:][:n]
        rows: list[dict[str, Any]] = []
        for k in range(n):
            i = block + k
            answer = pb.CachedAnswer(entry_id=f"{i:032x}", content=f"Set retries.max=3 for service {i}.",
                                     model="fake-small", question=stored_question(i))
            rows.append({"id": f"{i:032x}", "tenant": TENANT, "context_key": ctx, "model": "fake-small",
                         "question": stored_question(i),
                         "answer": base64.b64encode(answer.SerializeToString()).decode(),
                         "created": now, "expires": now + 86_400_000, "vector": vecs[k]})
        client.insert(name, rows, partition_name=partition, timeout=600)
        block += n
    client.flush(name, timeout=1800)
    client.close()


def wait_indexed(settings: CacheSettings, expected: int, timeout_s: float = 1800) -> float:
    """Seals the growing segments and waits until a server reports every row indexed (segment indexes are
    built in the background; growing segments would be searched by brute force meanwhile)."""
    from pymilvus import MilvusClient

    if settings.milvus_is_lite:
        return 0.0
    client = MilvusClient(settings.resolved_milvus_uri)
    name = SemanticTier(settings).collection_name(MODEL_ID)
    t0 = time.perf_counter()
    client.flush(name, timeout=timeout_s)
    while time.perf_counter() - t0 < timeout_s:
        info = client.describe_index(name, "vector")
        # pending_index_rows also counts segments that compaction rewrites: indexed_rows is what matters.
        if int(info.get("indexed_rows", 0)) >= expected:
            break
        time.sleep(2)
    else:
        print(f"  (index still building after {timeout_s:.0f} s: {info})")
    client.close()
    return time.perf_counter() - t0


async def run(sizes: list[int], lookups: int, concurrency: int, milvus: str, rpc_fill_max: int,
              judge: bool, compare: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="weir-cache-bench-"))
    redis = start_local_redis(work / "redis")
    procs: list[supervisor.Process] = []
    env = {
        "WEIR_REDIS_URL": redis.url, "WEIR_STATE_DIR": str(work / "state"), "WEIR_CACHE_PORT": "0",
        "WEIR_LOG_LEVEL": "warning", "WEIR_CACHE_MAX_ENTRIES_PER_TENANT": str(max(sizes) + 1),
        "WEIR_METRICS_PORT": "0",
    }
    milvus_pid = 0
    if milvus == "server":
        procs.append(milvus_local.start_milvus(work / "milvus", log_dir=work))
        env["WEIR_MILVUS_URI"], milvus_pid = procs[-1].info["uri"], int(procs[-1].info["pid"])
    elif milvus != "lite":
        env["WEIR_MILVUS_URI"] = milvus
    if judge:  # the embedder serves the judge (its embeddings are not used: the vectors are precomputed)
        procs.append(supervisor.start("embedder", supervisor.python_module("services.embedder"),
                                      {**env, "WEIR_EMBEDDER_PORT": "0", "WEIR_EMBEDDER_JUDGE": "true"},
                                      log_dir=work))
        env["WEIR_EMBEDDER_ADDR"] = procs[-1].grpc
    else:
        env["WEIR_CACHE_JUDGE"] = "false"
    settings = load(CacheSettings, {**os.environ, **env})
    proc = supervisor.start("cache", supervisor.python_module("services.cache"), env, log_dir=work)
    procs.append(proc)
    cache_pid = proc.popen.pid
    other: supervisor.Process | None = None
    if compare:  # a second cache process on the same Milvus, Redis and collection, with the judge the other way
        other = supervisor.start("cache-other", supervisor.python_module("services.cache"),
                                 {**env, "WEIR_CACHE_JUDGE": "false" if judge else "true"}, log_dir=work)
        procs.append(other)
    where = "bundled standalone" if milvus == "server" else settings.resolved_milvus_uri
    print(f"cache pid {cache_pid}, milvus {milvus} ({where}{f', pid {milvus_pid}' if milvus_pid else ''}), "
          f"judge {'on' if judge else 'off'}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    summary: list[str] = []
    rng = np.random.default_rng(7)
    try:
        async with open_channel(proc.grpc) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            filled = rpc_filled = 0
            for size in sizes:
                t0 = time.perf_counter()
                rpc_end = min(size, max(rpc_fill_max, 1))
                how = []
                if rpc_end > filled:
                    outcomes = await fill_rpc(stub, filled, rpc_end, concurrency)
                    how.append(f"{rpc_end - filled} via Store ({'; '.join(f'{r}: {n}' for r, n in outcomes.items())})")
                    rpc_filled = rpc_end
                if size > max(filled, rpc_end):
                    direct_from = max(filled, rpc_end)
                    await asyncio.to_thread(fill_direct, settings, direct_from, size)
                    how.append(f"{size - direct_from} inserted directly")
                fill_s = time.perf_counter() - t0
                index_s = await asyncio.to_thread(wait_indexed, settings, size)
                filled = size
                await asyncio.sleep(3.0)  # Milvus Lite flushes and builds segment indexes once writes pause
                print(f"\n{size} entries: filled in {fill_s:.1f} s ({', '.join(how)}), indexed after "
                      f"{index_s:.1f} s more; load {os.getloadavg()[0]:.1f}")
                hits = await measure(stub, size, rpc_filled, lookups, rng)
                if other is not None:
                    print("  judge on and off, interleaved:")
                    async with open_channel(other.grpc) as other_channel:
                        other_stub = pb_grpc.CacheServiceStub(other_channel)
                        on, off = (stub, other_stub) if judge else (other_stub, stub)
                        await compare_judge({"judge on": on, "judge off (rules only)": off}, size, lookups, rng)
                stats = await stub.GetStats(pb.GetStatsRequest(tenant=TENANT))
                cache_rss = rss_mib(cache_pid)
                milvus_rss = rss_mib(milvus_pid) if milvus_pid else float("nan")
                print(f"  entries via Store: exact={stats.exact_entries} semantic={stats.semantic_entries}; "
                      f"RSS cache {cache_rss:.0f} MiB" + (f", milvus {milvus_rss:.0f} MiB" if milvus_pid else ""))
                print(f"  judge pairs so far (the measured cache): {judge_pairs(proc)}")
                p50, p99 = percentiles(hits)
                milvus_col = f"{milvus_rss:8.0f} MiB" if milvus_pid else "      (in cache)"
                summary.append(f"  {size:>9}  {fill_s + index_s:9.1f} s  {p50:8.2f} ms  {p99:8.2f} ms  "
                               f"{cache_rss:8.0f} MiB  {milvus_col}")
    finally:
        supervisor.stop_all(procs)
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsummary ({milvus}): semantic lookup (search + verify{' with the judge' if judge else ', rules only'}, "
          "embedding excluded) through gRPC")
    print("       size       fill      p50         p99     cache RSS   milvus RSS")
    print("\n".join(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--milvus", default="server", help="server (bundled standalone), lite, or a Milvus URI")
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated entry counts, ascending")
    parser.add_argument("--lookups", type=int, default=500, help="timed lookups per kind and size")
    parser.add_argument("--concurrency", type=int, default=8, help="Store calls in flight while filling")
    parser.add_argument("--rpc-fill-max", type=int, default=20_000,
                        help="entries stored through Store; the rest are inserted directly")
    parser.add_argument("--judge", choices=("on", "off"), default="on",
                        help="on: the verifier asks the embedder's paraphrase judge, as in the mesh; off: rules only")
    parser.add_argument("--compare-judge", action="store_true",
                        help="after each size, semantic hits with the judge and without it, interleaved "
                             "(a second cache process on the same collection)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    asyncio.run(run(sizes, args.lookups, args.concurrency, args.milvus, args.rpc_fill_max, args.judge == "on",
                    args.compare_judge))


if __name__ == "__main__":
    main()
