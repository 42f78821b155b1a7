"""Policy benchmark: what the admission checks (key, rpm/tpm windows for key and team, key and team budgets:
one Redis script) add to the miss path, at concurrency 16.

Two kinds of requests go through the same mesh, interleaved in rounds so both see the same machine load:
the master key (exempt from limits: no admission round trip; its usage is still settled and ledgered) and a
team key with every limit and budget set (so the script checks and reserves four windows and two budgets).
Reported: end-to-end p50/p99 of each, their difference, the admission time the gateway measured itself
(the `policy` hop of Server-Timing) and the gateway's CPU time per request of each kind (from /proc). On a
small, busy machine the whole mesh saturates the CPU at concurrency 16 and end-to-end differences drown in
queueing, so the admission call is also measured alone: 16 concurrent callers of `Policy.admit` against the
same Redis, the way the gateway calls it.

    .venv/bin/python -m bench.policy_bench [--requests 1200] [--concurrency 16] [--provider-latency-ms 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import orjson
import redis.asyncio as aioredis

from bench.measure import cpu_seconds, pct
from services.gateway.auth import KeyStore
from services.gateway.metrics import GatewayMetrics
from services.gateway.policy import Policy
from services.gateway.pricing import Pricing
from services.gateway.timings import Timings
from weir.devmesh import MASTER_KEY, Mesh, start_mesh
from weir.kit.redis_local import start_local_redis
from weir.kit.server import install_event_loop
from weir.mesh_config import load_mesh_config

_HOP = re.compile(r"(policy|route);dur=([0-9.]+)")


async def load(session: aiohttp.ClientSession, url: str, key: str, n: int, concurrency: int, tag: str,
               hops: dict[str, list[float]], spread_ms: float = 0.0) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(n))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    rng = random.Random(tag)

    async def worker() -> None:
        for i in counter:
            if spread_ms:  # a random pause (not timed) keeps the clients from arriving in lockstep
                await asyncio.sleep(rng.uniform(0, spread_ms) / 1000)
            body = orjson.dumps({"model": "fake-small", "temperature": 0, "max_tokens": 64,
                                 "messages": [{"role": "user", "content": f"Unique question {tag} {i}?"}]})
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                if r.headers.get("x-weir-cache") != "miss":
                    raise RuntimeError("expected a cache miss")
                for hop, ms in _HOP.findall(r.headers.get("Server-Timing", "")):
                    hops.setdefault(hop, []).append(float(ms))
            latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def make_key(mesh: Mesh) -> str:
    admin = {"Authorization": f"Bearer {mesh.master_key}"}
    team = "bench"
    httpx.put(f"{mesh.http}/v1/admin/teams/{team}", headers=admin,
              json={"rpm": 10_000_000, "tpm": 10_000_000_000, "budget_usd": 1_000_000, "period": "month"})
    r = httpx.post(f"{mesh.http}/v1/admin/keys", headers=admin,
                   json={"team": team, "rpm": 10_000_000, "tpm": 10_000_000_000, "budget_usd": 1_000_000,
                         "period": "day", "models": ["fake-small", "auto"]})
    r.raise_for_status()
    return str(r.json()["key"])


async def bench(mesh: Mesh, n: int, concurrency: int, rounds: int, latency_ms: float, spread_ms: float) -> None:
    url = f"{mesh.base_url}/chat/completions"
    key = make_key(mesh)
    run = os.urandom(3).hex()
    size = max(concurrency, n // rounds)
    results: dict[str, list[float]] = {"master key (no checks)": [], "limited key (policy)": []}
    cpu: dict[str, float] = dict.fromkeys(results, 0.0)
    per_round: dict[str, list[tuple[float, float]]] = {name: [] for name in results}  # (p50, p99) per round
    gateway_pid = mesh.procs["gateway"].popen.pid
    hops: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        await load(s, url, mesh.master_key, 100, concurrency, f"warm-{run}-a", {})
        await load(s, url, key, 100, concurrency, f"warm-{run}-b", {})
        for r in range(rounds):
            order = list(results) if r % 2 == 0 else list(reversed(results))
            for name in order:
                k = mesh.master_key if name.startswith("master") else key
                before = cpu_seconds(gateway_pid)
                lat = await load(s, url, k, size, concurrency, f"{run}-{r}-{name[:6]}",
                                 hops if k == key else {}, spread_ms)
                await asyncio.sleep(0.2)  # settlements finish in the background
                cpu[name] += cpu_seconds(gateway_pid) - before
                results[name].extend(lat)
                per_round[name].append((statistics.median(lat), pct(lat, 0.99)))
    print(f"\nMiss path through the REST bridge, concurrency {concurrency}, {rounds} interleaved rounds, "
          f"{size} requests per round and kind (fake provider latency {latency_ms:g} ms"
          + (f"; clients pause 0-{spread_ms:g} ms at random before each request)" if spread_ms else ")"))
    print(f"{'':<27} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'gw CPU-ms/req':>14} {'n':>6}")
    for name, lat in results.items():
        print(f"{name:<27} {statistics.median(lat):>8.2f} {pct(lat, 0.99):>8.2f} {statistics.fmean(lat):>8.2f} "
              f"{cpu[name] * 1000 / len(lat):>14.2f} {len(lat):>6}")
    base, pol = results["master key (no checks)"], results["limited key (policy)"]
    names = list(results)
    print(f"{'added by the policy':<27} {statistics.median(pol) - statistics.median(base):>+8.2f} "
          f"{pct(pol, 0.99) - pct(base, 0.99):>+8.2f} {statistics.fmean(pol) - statistics.fmean(base):>+8.2f} "
          f"{(cpu[names[1]] - cpu[names[0]]) * 1000 / len(pol):>+14.2f}")
    pairs = list(zip(*per_round.values(), strict=True))
    d50 = statistics.median(b[0] - a[0] for a, b in pairs)
    d99 = statistics.median(b[1] - a[1] for a, b in pairs)
    print(f"{'added, median of rounds':<27} {d50:>+8.2f} {d99:>+8.2f}   (paired per round: robust to load drift)")
    for hop, label in (("policy", "admission (Server-Timing)"), ("route", "route hop, for comparison")):
        ms = hops[hop]
        print(f"{label:<27} {statistics.median(ms):>8.2f} {pct(ms, 0.99):>8.2f} {statistics.fmean(ms):>8.2f} "
              f"{'':>14} {len(ms):>6}")


async def admission_alone(redis_url: str, n: int, concurrencies: tuple[int, ...]) -> float:
    """Policy.admit (key + team windows and budgets) from `concurrency` tasks, as the gateway calls it."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.25)
    keys = KeyStore(client, MASTER_KEY, "weir:")
    raw, _ = await keys.create(team="bench-alone", rpm=10_000_000, tpm=10_000_000_000, budget_nusd=10**18)
    await keys.set_team("bench-alone", {"rpm": "10000000", "tpm": "10000000000", "budget_nusd": str(10**18)})
    policy = Policy(client, client, keys, Pricing(load_mesh_config()), GatewayMetrics(), prefix="weir:",
                    default_max_tokens=512, limits_fail_open=True, budgets_fail_open=False, events_kept=1000,
                    usage_retention_days=1)
    print(f"\nAdmission alone ({n} calls per row; Lua: key + team windows and budgets checked and reserved)")
    first = 0.0
    for concurrency in concurrencies:
        latencies: list[float] = []
        counter = iter(range(n))

        async def worker(it: Iterator[int], out: list[float]) -> None:
            for _ in it:
                t = time.perf_counter()
                await policy.admit(raw, "fake-small", 20, 64, True, Timings())
                out.append((time.perf_counter() - t) * 1000)

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(counter, latencies) for _ in range(concurrency)))
        rate = n / (time.perf_counter() - t0)
        cpu_us = (time.process_time() - c0) / n * 1e6
        p50 = statistics.median(latencies)
        first = first or p50
        print(f"  concurrency {concurrency:>2}: p50 {p50:.3f} ms   p99 {pct(latencies, 0.99):.3f} ms   "
              f"{rate:,.0f} admissions/s from one process, {cpu_us:.0f} CPU-us each in it")
    await client.aclose()
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1200, help="requests per kind")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds per kind")
    parser.add_argument("--provider-latency-ms", type=float, default=0.0,
                        help="the fake provider's answer time; with 0 a 2-core machine saturates at concurrency 16")
    parser.add_argument("--spread-ms", type=float, default=0.0,
                        help="each client pauses a random 0..N ms (untimed) before each request, so that clients "
                             "with a constant-latency provider do not arrive in lockstep")
    parser.add_argument("--milvus", choices=("server", "lite"), default="server",
                        help="semantic tier: the bundled Milvus standalone (as `weir up` runs it) or Milvus Lite")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="weir-policy-bench-"))
    redis = start_local_redis(state / "redis")
    print("starting the mesh (fake-llm, embedder, cache, router, reasoner, gateway) ...")
    mesh = start_mesh(state, redis.url, {"WEIR_LOG_LEVEL": "warning",
                                         "WEIR_FAKE_LLM_LATENCY_MS": str(args.provider_latency_ms)},
                      milvus=args.milvus)
    try:
        asyncio.run(bench(mesh, args.requests, args.concurrency, args.rounds, args.provider_latency_ms,
                          args.spread_ms))
        install_event_loop()  # the gateway's own loop (uvloop)
        asyncio.run(admission_alone(redis.url, 4000, (1, args.concurrency)))
    finally:
        mesh.stop()
        redis.stop()


if __name__ == "__main__":
    main()
