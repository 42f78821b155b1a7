"""Soak: RSS of every process over a long mixed load (misses, exact hits, semantic hits, streams).

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 20] [--milvus server|lite]

Runs the whole mesh as `make bench` does, sends `--rate` requests/s (40% new questions, 40% exact repeats, 15%
paraphrases, 5% streamed) from a fixed pool that keeps growing, samples each process's RSS from /proc every
`--every` seconds and prints the table and, per process, the growth from the first sample after warm-up (the
first 10% of the run) to the last. The goal (issue #9): every service flat within 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.measure import rss_mb
from bench.mesh_bench import COUNTRIES, PARAPHRASES, STORED
from weir.devmesh import start_mesh
from weir.kit.redis_local import start_local_redis


async def load(url: str, key: str, rate: float, seconds: float, counts: dict[str, int]) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    run = os.urandom(3).hex()
    rng = random.Random(7)
    asked: list[str] = [STORED.format(c) for c in COUNTRIES]
    deadline = time.monotonic() + seconds
    sem = asyncio.Semaphore(32)

    async def one(session: aiohttp.ClientSession, text: str, stream: bool) -> None:
        body = orjson.dumps({"model": "fake-small", "temperature": 0, "stream": stream,
                             "messages": [{"role": "user", "content": text}]})
        try:
            async with sem, session.post(url, data=body, headers=headers) as r:
                await r.read()
                counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        except aiohttp.ClientError as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while time.monotonic() < deadline:
            i += 1
            roll = rng.random()
            if roll < 0.40:
                text = f"Soak question {run} number {i}: what is {i} plus {i % 97}?"
                asked.append(text)
                if len(asked) > 5000:
                    asked.pop(46)
            elif roll < 0.80:
                text = rng.choice(asked)
            else:
                text = rng.choice(PARAPHRASES).format(rng.choice(COUNTRIES))
            task = asyncio.get_running_loop().create_task(one(session, text, roll >= 0.95))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)
        if tasks:
            await asyncio.wait(tasks, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--milvus", choices=("server", "lite"), default="server")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="weir-soak-"))
    redis = start_local_redis(state / "redis")
    mesh = start_mesh(state, redis.url, {"WEIR_LOG_LEVEL": "warning"}, milvus=args.milvus)
    pids = {name: p.popen.pid for name, p in mesh.procs.items()}
    pids["redis"] = redis.popen.pid
    samples: list[tuple[float, dict[str, float]]] = []
    counts: dict[str, int] = {}
    seconds = args.minutes * 60

    async def sampler() -> None:
        t0 = time.monotonic()
        while True:
            samples.append((time.monotonic() - t0, {k: rss_mb(p) for k, p in pids.items()}))
            await asyncio.sleep(args.every)

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(sampler())
        await load(f"{mesh.base_url}/chat/completions", mesh.master_key, args.rate, seconds, counts)
        task.cancel()
        samples.append((seconds, {k: rss_mb(p) for k, p in pids.items()}))

    try:
        print(f"soak: {args.minutes:g} min at {args.rate:g} req/s, RSS (MiB) every {args.every:g} s", flush=True)
        asyncio.run(run())
    finally:
        mesh.stop()
        redis.stop()
    names = list(pids)
    print(f"{'t (s)':>7} " + " ".join(f"{n:>9}" for n in names))
    for t, row in samples:
        print(f"{t:>7.0f} " + " ".join(f"{row[n]:>9.1f}" for n in names))
    base = next((row for t, row in samples if t >= seconds * 0.1), samples[0][1])
    last = samples[-1][1]
    print("\ngrowth after warm-up (first sample at >= 10% of the run -> last):")
    for n in names:
        g = (last[n] - base[n]) / base[n] * 100 if base[n] else 0.0
        print(f"  {n:<10} {base[n]:>8.1f} -> {last[n]:>8.1f} MiB  {g:+6.1f}%  {'ok' if g <= 5 else 'GROWS'}")
    print(f"responses: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
