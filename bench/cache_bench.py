"""Cache lookup latency through the gRPC service, as the semantic tier grows.

    .venv/bin/python -m bench.cache_bench [--sizes 1000,10000] [--lookups 500] [--concurrency 8]

Starts a private redis-server and `python -m services.cache` (Milvus Lite in a temp dir), then for each
size fills ONE tenant with that many entries through Store (synthetic unit vectors, 384-d, all in one
conversation context: the worst case for the semantic tier, every row passes the context filter) and
times, one call at a time from a grpc.aio client:
- LookupSemantic hits: a near vector (cosine 0.95) and a paraphrase, so search + the full verifier run;
- LookupSemantic misses: a random vector (nothing above the threshold);
- LookupExact hits and misses.
Embedding time is excluded (vectors are precomputed). RSS is the cache process' resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from weir.cache.v1 import cache_service_pb2 as pb
from weir.cache.v1 import cache_service_pb2_grpc as pb_grpc
from weir.common.v1 import types_pb2
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.redis_local import start_local_redis

DIM = 384
MODEL_ID = "all-minilm-l6-v2@bench"
TENANT = "bench"


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


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


def near(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.normal(size=DIM).astype(np.float32)
    u -= float(u @ v) * v
    u /= np.linalg.norm(u)
    w = cosine * v + np.sqrt(1 - cosine**2) * u
    out: np.ndarray = (w / np.linalg.norm(w)).astype(np.float32)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def row(name: str, samples_ns: list[int]) -> str:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return (f"  {name:<40} p50 {np.percentile(arr, 50):7.2f} ms   p99 {np.percentile(arr, 99):7.2f} ms   "
            f"mean {arr.mean():7.2f} ms   n={len(arr)}")


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


async def measure(stub: pb_grpc.CacheServiceAsyncStub, vecs: np.ndarray, size: int, lookups: int,
                  rng: np.random.Generator) -> None:
    """Times each lookup kind over prebuilt requests (so only the call is timed)."""
    targets = [int(t) for t in rng.integers(0, size, size=lookups + 20)]
    sem_hits = [pb.LookupSemanticRequest(tenant=TENANT, request=request(paraphrase(t)),
                                         embedding=embedding(near(vecs[t], 0.95, rng))) for t in targets]
    sem_misses = [pb.LookupSemanticRequest(tenant=TENANT, request=request(f"Unrelated question {i}?"),
                                           embedding=embedding(v)) for i, v in enumerate(unit_rows(rng, lookups))]
    ex_hits = [pb.LookupExactRequest(tenant=TENANT, request=request(stored_question(t))) for t in targets[:lookups]]
    ex_misses = [pb.LookupExactRequest(tenant=TENANT, request=request(f"Never stored {i}")) for i in range(lookups)]

    def semantic(r: pb.LookupSemanticRequest) -> Callable[[], Awaitable[object]]:
        return lambda: stub.LookupSemantic(r)

    def exact(r: pb.LookupExactRequest) -> Callable[[], Awaitable[object]]:
        return lambda: stub.LookupExact(r)

    await timed([semantic(r) for r in sem_hits[lookups:]])  # warm-up
    print(report("LookupSemantic hit (search + verify)", await timed([semantic(r) for r in sem_hits[:lookups]])))
    print(report("LookupSemantic miss (below threshold)", await timed([semantic(r) for r in sem_misses])))
    print(report("LookupExact hit", await timed([exact(r) for r in ex_hits])))
    print(report("LookupExact miss", await timed([exact(r) for r in ex_misses])))


async def fill(stub: pb_grpc.CacheServiceAsyncStub, vecs: np.ndarray, start: int, end: int,
               concurrency: int) -> tuple[float, list[int], Counter[str]]:
    """Stores entries start..end-1 with `concurrency` calls in flight: (seconds, latencies, outcomes)."""
    next_i = start
    samples: list[int] = []
    outcomes = Counter[str]()

    async def worker() -> None:
        nonlocal next_i
        while next_i < end:
            i = next_i
            next_i += 1
            t0 = time.perf_counter_ns()
            resp = await stub.Store(pb.StoreRequest(
                tenant=TENANT, request=request(stored_question(i)),
                answer=pb.CachedAnswer(content=f"Set retries.max=3 for service {i}.", model="fake-small"),
                embedding=embedding(vecs[i])), timeout=120)
            samples.append(time.perf_counter_ns() - t0)
            outcomes[resp.reason] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, samples, outcomes


async def run(sizes: list[int], lookups: int, concurrency: int) -> None:
    rng = np.random.default_rng(0)
    vecs = unit_rows(rng, max(sizes))
    work = Path(tempfile.mkdtemp(prefix="weir-cache-bench-"))
    redis = start_local_redis(work / "redis")
    env = {
        "WEIR_REDIS_URL": redis.url, "WEIR_STATE_DIR": str(work / "state"), "WEIR_CACHE_PORT": "0",
        "WEIR_LOG_LEVEL": "warning", "WEIR_CACHE_MAX_ENTRIES_PER_TENANT": str(max(sizes) + 1),
    }
    proc = supervisor.start("cache", supervisor.python_module("services.cache"), env, log_dir=work)
    print(f"cache pid {proc.popen.pid}, Milvus Lite in {work / 'state'}, {os.cpu_count()} cpus; "
          f"RSS at start {rss_mib(proc.popen.pid):.0f} MiB")
    try:
        async with open_channel(proc.grpc) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            filled = 0
            for size in sizes:
                secs, samples, outcomes = await fill(stub, vecs, filled, size, concurrency)
                print(f"\n{size} entries (filled {size - filled} in {secs:.1f} s, "
                      f"{(size - filled) / secs:.0f} stores/s at concurrency {concurrency})")
                print(row("Store (while filling)", samples) + f"   max {max(samples) / 1e6:.0f} ms")
                print("  " + "; ".join(f"{reason}: {n}" for reason, n in outcomes.most_common()))
                filled = size
                await asyncio.sleep(2.0)  # writes pause: Milvus Lite flushes and builds the segment indexes
                await measure(stub, vecs, size, lookups, rng)
                stats = await stub.GetStats(pb.GetStatsRequest(tenant=TENANT))
                print(f"  entries exact={stats.exact_entries} semantic={stats.semantic_entries}; "
                      f"cache RSS {rss_mib(proc.popen.pid):.0f} MiB")
    finally:
        proc.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated entry counts, ascending")
    parser.add_argument("--lookups", type=int, default=500, help="timed lookups per kind and size")
    parser.add_argument("--concurrency", type=int, default=8, help="Store calls in flight while filling")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    asyncio.run(run(sizes, args.lookups, args.concurrency))


if __name__ == "__main__":
    main()
