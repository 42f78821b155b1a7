"""Mesh benchmark: latency through the REST bridge for exact hits, semantic hits (a paraphrase met for the first
time, as in the `semantic` row's first pass and every `novel` request, waits for its embedding and the judge;
the `repeat` row asks the same paraphrases again, as popular ones recur), misses, uncached requests
(temperature 0.7: no embedding, lookup or store) and later turns of conversations never seen (a cacheable miss
whose context holds no entry: no semantic search, the embedding only for the store), against calling
the fake provider directly, at several concurrencies; plus CPU-ms per request per process (from /proc).
Streaming: time to first token of each path at concurrency 1, a cacheable miss also with the model call raced
against the semantic lookup (x-weir-stream-race: on); `--provider-ttft-ms N` gives the fake provider a time to
first token of N ms for those rows (0 by default, as in the issue's reference figures; real providers take
100 ms and more, and only then does the race show).

    make bench            # or: .venv/bin/python -m bench.mesh_bench [--requests 400] [--provider-ttft-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson

from bench.measure import cpu_seconds, pct
from services.cache.eval.run import BOUNDED_STALENESS_S
from services.gateway.hub import RACE_WON
from weir.devmesh import Mesh, start_mesh
from weir.kit.redis_local import start_local_redis

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Portugal", "Poland", "Austria", "Norway", "Sweden", "Finland",
             "Denmark", "Ireland", "Greece", "Hungary", "Romania", "Bulgaria", "Croatia", "Serbia", "Slovakia",
             "Slovenia", "Estonia", "Latvia", "Lithuania", "Iceland", "Belgium", "Netherlands", "Switzerland",
             "Canada", "Mexico", "Brazil", "Argentina", "Chile", "Peru", "Colombia", "Japan", "China", "India",
             "Egypt", "Kenya", "Nigeria", "Morocco", "Australia", "Vietnam", "Thailand", "Indonesia", "Turkey"]
STORED = "What is the capital of {}?"
PARAPHRASES = ["What's the capital city of {}?", "Which city is the capital of {}?", "what is the capital of {}",
               "Tell me the capital of {}."]
#: Paraphrases for the `novel` scenario: each request's text is new to every LRU in the mesh (the embedder's
#: embeddings, the verifier's analyses, the judge's scores), as a first-time paraphrase is in production.
NOVEL = ["What is {}'s capital?", "Name the capital of {}.", "What is the capital city of {}?",
         "Which city is {}'s capital?", "capital of {}?", "Tell me the capital city of {}.",
         "Do you know the capital of {}?", "What's {}'s capital city?", "I'd like to know the capital of {}.",
         "Could you tell me the capital of {}?"]


async def run_load(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   bodies: Callable[[int], bytes], n: int, concurrency: int,
                   expect: str | None = None) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(n))
    wrong = 0
    seen: list[str] = []  # what the first few unexpected responses were, and why

    async def worker() -> None:
        nonlocal wrong
        for i in counter:
            body = bodies(i)
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                if expect is not None and r.headers.get("x-weir-cache") != expect:
                    wrong += 1
                    if len(seen) < 3:
                        seen.append(f"{orjson.loads(body)['messages'][-1]['content']!r}: "
                                    f"{r.headers.get('x-weir-cache')} ({r.headers.get('x-weir-cache-reason')})")
            latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if wrong:
        print(f"    note: {wrong}/{n} responses were not '{expect}': " + "; ".join(seen))
    return latencies


async def quiesce(pids: dict[str, int], idle_cpu_s: float = 0.02, step_s: float = 0.2, limit_s: float = 15.0) -> None:
    """Waits until the mesh is idle again (all processes together use less than `idle_cpu_s` of CPU in `step_s`),
    so work a request left running in the background (its store, its embedding) is counted with it."""
    deadline = time.monotonic() + limit_s
    last = sum(cpu_seconds(p) for p in pids.values())
    while time.monotonic() < deadline:
        await asyncio.sleep(step_s)
        now = sum(cpu_seconds(p) for p in pids.values())
        if now - last < idle_cpu_s:
            return
        last = now


async def run_ttft(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   bodies: Callable[[int], bytes], n: int,
                   expect: str | None = None,
                   reasons: Counter[str] | None = None) -> tuple[list[float], list[float]]:
    """Streams `n` answers one after another; returns the times to the first content chunk and to the end
    (and counts the x-weir-cache-reason headers into `reasons`)."""
    first: list[float] = []
    whole: list[float] = []
    for i in range(n):
        t = time.perf_counter()
        seen = False
        async with session.post(url, data=bodies(i), headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
            if expect is not None and r.headers.get("x-weir-cache") != expect:
                raise RuntimeError(f"expected a cache {expect}, got {r.headers.get('x-weir-cache')}: "
                                   f"{r.headers.get('x-weir-cache-reason')}")
            if reasons is not None:
                reasons[r.headers.get("x-weir-cache-reason", "")] += 1
            async for line in r.content:
                if not seen and line.startswith(b"data: {") and b'"content":"' in line:
                    first.append((time.perf_counter() - t) * 1000)
                    seen = True
        whole.append((time.perf_counter() - t) * 1000)
    return first, whole


def stream_body(model: str, text: str, temperature: float = 0.0) -> bytes:
    return orjson.dumps({"model": model, "stream": True, "temperature": temperature,
                         "messages": [{"role": "user", "content": text}]})


def body(model: str, text: str, temperature: float = 0.0) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}],
                         "temperature": temperature})


def turn_messages(opening: str) -> list[dict[str, str]]:
    """A later turn of a conversation: its context (the earlier turns) and its question differ per `opening`."""
    return [{"role": "user", "content": opening}, {"role": "assistant", "content": "Happy to help with that."},
            {"role": "user", "content": f"What should I pack for it ({opening})?"}]


def turn_body(model: str, opening: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": turn_messages(opening), "temperature": 0.0, "stream": stream})


SCENARIOS = ("direct", "miss", "uncached", "turn", "exact", "semantic", "repeat", "novel", "stream")


async def bench(mesh: Mesh, n: int, levels: list[int], wanted: list[str], redis_pid: int,
                provider_ttft_ms: float = 0.0, settle_s: float = 1.0) -> None:
    gw = f"{mesh.base_url}/chat/completions"
    direct = f"{mesh.fake_url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {mesh.master_key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    pids = {name: p.popen.pid for name, p in mesh.procs.items()}
    pids["redis"] = redis_pid
    conn = aiohttp.TCPConnector(limit=256)
    run_id = os.urandom(3).hex()
    async with aiohttp.ClientSession(connector=conn) as s:
        # Warm up every path and seed the caches; then wait until the seeded rows are searchable (a Milvus
        # server's collections use Bounded consistency: a new row may stay hidden for its 5 s staleness bound).
        for c in COUNTRIES:
            async with s.post(gw, data=body("fake-small", STORED.format(c)), headers=auth) as r:
                await r.read()
        await asyncio.sleep(settle_s)
        rows = []
        cpu_rows = []
        for conc in levels:
            def direct_body(i: int, c: int = conc) -> bytes:
                return body("fake-small", f"direct {run_id} {c} {i}")

            def miss_body(i: int, c: int = conc) -> bytes:
                return body("fake-small", f"Unique question {run_id} {c} {i}?")

            def uncached_body(i: int, c: int = conc) -> bytes:  # not cacheable: no embedding, no lookup, no store
                return body("fake-small", f"Uncached question {run_id} {c} {i}?", 0.7)

            def turn_of(i: int, c: int = conc) -> bytes:  # cacheable, in a conversation context never seen
                return turn_body("fake-small", f"Plan a trip {run_id} {c} {i}")

            def exact_body(i: int) -> bytes:
                return body("fake-small", STORED.format(COUNTRIES[i % len(COUNTRIES)]))

            def semantic_body(i: int) -> bytes:
                para = PARAPHRASES[(i // len(COUNTRIES)) % len(PARAPHRASES)]
                return body("fake-small", para.format(COUNTRIES[i % len(COUNTRIES)]))

            def novel_body(i: int, c: int = conc) -> bytes:
                # A text no earlier request of this run sent (until the 460 run out: then a note says so).
                k = levels.index(c) * n + i
                if k == len(NOVEL) * len(COUNTRIES):
                    print(f"    note: the novel paraphrases ran out after {k}: later ones repeat")
                k %= len(NOVEL) * len(COUNTRIES)
                return body("fake-small", NOVEL[k // len(COUNTRIES)].format(COUNTRIES[k % len(COUNTRIES)]))

            scenarios: list[tuple[str, str, dict[str, str], Callable[[int], bytes], str | None]] = [
                ("direct fake-llm", direct, plain, direct_body, None),
                ("miss (mesh)", gw, auth, miss_body, "miss"),
                ("uncached (mesh)", gw, auth, uncached_body, "miss"),
                ("turn (mesh)", gw, auth, turn_of, "miss"),
                ("exact hit", gw, auth, exact_body, "exact"),
                ("semantic hit", gw, auth, semantic_body, "semantic"),
                # The same paraphrases again: each one's embedding, analysis and judge score are remembered, as
                # for a popular paraphrase in production (the row above meets each of them once, first, and the
                # novel row below only ever new ones).
                ("repeated paraphrase hit", gw, auth, semantic_body, "semantic"),
                ("novel paraphrase hit", gw, auth, novel_body, "semantic"),
            ]
            for name, url, hdrs, make, expect in scenarios:
                key = "repeat" if name.startswith("repeated") else name.split()[0]
                if key not in wanted:
                    continue
                if key == "repeat" and "semantic" not in wanted:  # meet every paraphrase once, unmeasured
                    await run_load(s, url, hdrs, make, len(COUNTRIES) * len(PARAPHRASES), conc, expect)
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                t0 = time.perf_counter()
                lat = await run_load(s, url, hdrs, make, n, conc, expect)
                wall = time.perf_counter() - t0
                await quiesce(pids)
                after = {k: cpu_seconds(p) for k, p in pids.items()}
                rows.append((conc, name, statistics.median(lat), pct(lat, 0.99), n / wall))
                if url == gw:
                    cpu = {k: (after[k] - before[k]) * 1000 / n for k in pids if k != "fake-llm"}
                    cpu_rows.append((conc, name, cpu))
        ttft_rows = []
        model_first = 0
        if "stream" in wanted:
            streams = max(50, n // 4)
            if provider_ttft_ms:
                async with s.post(f"{mesh.fake_url}/_fake/faults", json={
                        "fault": f"slow_first_token:{provider_ttft_ms:g}", "count": -1, "model": "fake-small"}) as r:
                    r.raise_for_status()
            raced = {**auth, "x-weir-stream-race": "on"}
            for row, (name, url, hdrs, temp) in enumerate((
                    ("direct fake-llm", direct, plain, 0.0), ("miss (mesh)", gw, auth, 0.0),
                    ("miss, raced (mesh)", gw, raced, 0.0), ("uncached (mesh)", gw, auth, 0.7))):
                # A number of its own per row and request: no row's question is a paraphrase of another's.
                def stream_of(i: int, k: int = row, tp: float = temp) -> bytes:
                    return stream_body("fake-small", f"Stream {run_id} question {k * 100_000 + i}?", tp)

                reasons: Counter[str] = Counter()
                first, whole = await run_ttft(s, url, hdrs, stream_of, streams, None if url == direct else "miss",
                                              reasons)
                ttft_rows.append((name, statistics.median(first), pct(first, 0.99), statistics.median(whole)))
                if hdrs is raced:
                    model_first = reasons[RACE_WON]
                await quiesce(pids)

            def turn_stream(i: int) -> bytes:
                return turn_body("fake-small", f"Stream a trip {run_id} {i}", stream=True)

            first, whole = await run_ttft(s, gw, auth, turn_stream, streams, "miss")
            ttft_rows.append(("turn (mesh)", statistics.median(first), pct(first, 0.99), statistics.median(whole)))
            if provider_ttft_ms:
                async with s.post(f"{mesh.fake_url}/_fake/reset") as r:
                    r.raise_for_status()
        print(f"\nLatency through the REST bridge ({n} requests per row; fake provider latency 0)")
        print(f"{'conc':>4}  {'scenario':<23} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for conc, name, p50, p99, rps in rows:
            print(f"{conc:>4}  {name:<23} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f}")
        print("\nMiss-path overhead vs calling the fake provider directly")
        for conc in levels:
            d = next((r for r in rows if r[0] == conc and r[1] == "direct fake-llm"), None)
            for path in ("miss (mesh)", "uncached (mesh)", "turn (mesh)"):
                miss = next((r for r in rows if r[0] == conc and r[1] == path), None)
                if d is not None and miss is not None:
                    print(f"  conc {conc:>2} {path:<16}: p50 +{miss[2] - d[2]:.2f} ms, p99 +{miss[3] - d[3]:.2f} ms")
        if ttft_rows:
            ttft = {name: p50 for name, p50, _, _ in ttft_rows}
            print("\nStreaming, concurrency 1: time to the first content chunk (and to the end of the stream); "
                  f"provider time to first token {provider_ttft_ms:g} ms")
            for name, p50, p99, end in ttft_rows:
                print(f"  {name:<20} TTFT p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   whole stream p50 {end:7.2f} ms")
            base = ttft["direct fake-llm"]
            print(f"  mesh - direct: TTFT p50 +{ttft['miss (mesh)'] - base:.2f} ms with the cache lookups "
                  f"(embedding, exact, semantic), +{ttft['miss, raced (mesh)'] - base:.2f} ms with the model call "
                  f"raced against them, +{ttft['uncached (mesh)'] - base:.2f} ms without them "
                  "(temperature 0.7: policy, route, reasoner relay), "
                  f"+{ttft['turn (mesh)'] - base:.2f} ms for a cacheable later turn of a conversation never "
                  "seen (exact lookup only; the store embeds after the answer)")
            print(f"  raced: the model's first token came before the lookup ended in {model_first} of {streams} "
                  "streams (the rest waited for the lookup to miss)")
        names = [k for k in pids if k != "fake-llm"]
        print("\nCPU-ms per request by process (from /proc utime+stime)")
        infra = ("milvus", "redis", "embedder")
        print(f"{'conc':>4}  {'scenario':<23} " + " ".join(f"{k:>9}" for k in names) + f" {'total':>8}"
              f" {'weir excl. embedder':>20}")
        for conc, name, cpu in cpu_rows:
            print(f"{conc:>4}  {name:<23} " + " ".join(f"{cpu[k]:>9.2f}" for k in names) +
                  f" {sum(cpu.values()):>8.2f} {sum(v for k, v in cpu.items() if k not in infra):>20.2f}")
        print("(the embedder's column is mostly the model itself: ~4-6 CPU-ms per new text on this CPU; "
              "milvus and redis are the stores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="requests per scenario and concurrency")
    parser.add_argument("--milvus", choices=("server", "lite"), default="server",
                        help="semantic tier: the bundled Milvus standalone (as `weir up` runs it) or Milvus Lite")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="concurrency levels")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                        help="scenarios to run (direct = the fake provider without the mesh)")
    parser.add_argument("--provider-ttft-ms", type=float, default=0.0,
                        help="the fake provider's time to first token in the streaming rows (slow_first_token)")
    parser.add_argument("--gateways", type=int, default=1,
                        help="gateway processes sharing the REST port (SO_REUSEPORT; WEIR_GATEWAY_PROCESSES)")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="weir-bench-"))
    redis = start_local_redis(state / "redis")
    print("starting the mesh (fake-llm, embedder, cache, router, reasoner, gateway) ...")
    mesh = start_mesh(state, redis.url, {"WEIR_LOG_LEVEL": "warning"}, milvus=args.milvus,
                      gateways=args.gateways)
    try:
        asyncio.run(bench(mesh, args.requests, args.concurrency, args.scenarios, redis.popen.pid,
                          args.provider_ttft_ms, settle_s=BOUNDED_STALENESS_S if args.milvus == "server" else 1.0))
    finally:
        mesh.stop()
        redis.stop()


if __name__ == "__main__":
    main()
