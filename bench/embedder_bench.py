"""Embedder latency and throughput, in-process (the engine alone) and through the real gRPC service.

    .venv/bin/python -m bench.embedder_bench [--duration 4] [--single-n 300]

In-process: single-text latency (p50/p99) for a short query and a ~100-token text, and throughput of
`Engine.embed` at batch 32 and 128 (run by `Engine.workers` threads, as the service does).
Through gRPC: `python -m services.embedder` started with weir.kit.supervisor on a free port
(settings from the environment: WEIR_EMBEDDER_*), then 1, 16 and 64 concurrent callers sending
unary Embed calls for `--duration` seconds each, with distinct texts (every call a model run: the
LRU cannot help) and, for reference, with texts that repeat (LRU hits).
Goals on a 2-core box: short query p50 <= 4 ms in the service; >= 600 sentences/s at 64 callers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.embedder.engine import Engine, EngineOptions
from services.embedder.settings import EmbedderSettings
from weir.embedder.v1 import embedder_service_pb2 as pb
from weir.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.config import load

SHORT = "How do I reset my password?"
MEDIUM = (
    "Our quarterly report shows revenue grew eleven percent while operating costs stayed flat, "
    "mainly because the new logistics contract reduced shipping times across the northern region. "
    "The board asked for a forecast covering the next two quarters, including hiring plans, risks "
    "from currency movements, and the expected effect of the price change announced in March. "
    "Please draft a short answer for the shareholders that explains these numbers in plain language "
    "and lists the three most important open questions."
)

_SUBJECTS = ["the customer", "our team", "a student", "the server", "my manager", "the doctor", "a robot",
             "the city council", "an engineer", "the new intern", "the library", "a small bakery"]
_VERBS = ["asked about", "complained about", "explained", "forgot", "wants to know", "is comparing",
          "wrote a summary of", "needs help with", "cannot find", "is worried about"]
_OBJECTS = ["the refund policy", "password resets", "Python generators", "the quarterly budget",
            "flight delays to Berlin", "vector databases", "a gluten-free recipe", "TLS certificates",
            "the history of Rome", "tax deadlines", "solar panel efficiency", "a broken laptop screen"]


def distinct_texts(kind: str = "sentence") -> Iterator[str]:
    """Endless distinct, natural-looking texts: "query" ~10 tokens, "sentence" ~21 tokens."""
    i = 0
    while True:
        s, v, o = _SUBJECTS[i % 12], _VERBS[(i // 12) % 10], _OBJECTS[(i // 120) % 12]
        if kind == "query":
            yield f"{s} {v} {o} #{i}"
        else:
            yield f"Request {i}: {s} {v} {o} and needs an answer by day {i % 31 + 1}."
        i += 1


def pct(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def time_calls(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def in_process(settings: EmbedderSettings, single_n: int) -> None:
    engine = Engine(settings.model_dir, EngineOptions(
        providers=settings.providers, workers=settings.workers, intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads, allow_spinning=settings.allow_spinning,
    ))
    print(f"in-process engine: {engine.model_id}, providers {engine.providers}, "
          f"{engine.workers} workers x {engine.intra_op_threads} threads (a lone run: {engine.solo_threads}), "
          f"spinning {settings.allow_spinning}")
    for name, text in (("short query", SHORT), ("~100-token text", MEDIUM)):  # lone runs, as on an idle service
        tokens = engine.embed([text]).token_counts[0]
        p50, p99 = pct(time_calls(lambda t=text: engine.embed([t], True), single_n))  # type: ignore[misc]
        print(f"  single {name:<18} ({tokens:3d} tokens)  p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    for kind in ("query", "sentence"):
        gen = distinct_texts(kind)
        for size in (32, 128):
            batches = [[next(gen) for _ in range(size)] for _ in range(max(4, 768 // size))]
            mean_tokens = float(np.mean(engine.encoder.encode(batches[0]).token_counts))
            engine.embed(batches[0])
            with ThreadPoolExecutor(engine.workers) as pool:  # as the service runs them
                t0 = time.perf_counter()
                list(pool.map(engine.embed, batches[1:]))
                elapsed = time.perf_counter() - t0
            n = size * (len(batches) - 1)
            print(f"  batch {size:<4} distinct {kind:<8} (~{mean_tokens:4.1f} tokens) {n / elapsed:7.0f} sentences/s"
                  f"   ({elapsed / (len(batches) - 1) * 1000:.1f} ms/batch)")


async def grpc_load(stub: pb_grpc.EmbedderServiceAsyncStub, callers: int, duration: float,
                    texts: Iterator[str]) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + duration

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            text = next(texts)
            t0 = time.perf_counter()
            await stub.Embed(pb.EmbedRequest(text=text))
            latencies.append(time.perf_counter() - t0)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done, latencies, time.perf_counter() - t0


async def through_grpc(duration: float) -> None:
    env = {"WEIR_EMBEDDER_PORT": "0", "WEIR_LOG_LEVEL": "warning"}
    proc = supervisor.start("embedder-bench", supervisor.python_module("services.embedder"), env)
    try:
        channel = open_channel(proc.grpc)
        stub = pb_grpc.EmbedderServiceStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        print(f"gRPC service {proc.grpc}: max_batch {info.max_batch_size}, max_wait {info.max_batch_wait_ms} ms, "
              f"intra_op_threads {info.intra_op_threads}, providers {list(info.execution_providers)}")
        warm, _, _ = await grpc_load(stub, 8, 0.5, distinct_texts("query"))
        cases: list[tuple[str, Callable[[], Iterator[str]], tuple[int, ...]]] = [
            ("distinct query", lambda: distinct_texts("query"), (1, 16, 64)),
            ("distinct sentence", lambda: distinct_texts("sentence"), (1, 16, 64)),
            ("repeated (LRU)", lambda: _repeating(64), (1, 64)),
        ]
        offset = warm + 8  # texts already seen (LRU) are skipped
        for label, make, levels in cases:
            for callers in levels:
                texts = make()
                for _ in range(offset):  # fresh texts for each level: no LRU hits across levels
                    next(texts)
                before = await stub.GetModelInfo(pb.GetModelInfoRequest())
                done, lat, elapsed = await grpc_load(stub, callers, duration, texts)
                offset += done + callers
                after = await stub.GetModelInfo(pb.GetModelInfoRequest())
                runs = after.runs - before.runs
                mean_batch = (after.texts_embedded - before.texts_embedded) / runs if runs else 0.0
                p50, p99 = pct(lat)
                print(f"  {label:<18} {callers:3d} callers  {done / elapsed:7.0f} sentences/s   "
                      f"p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   mean batch {mean_batch:5.1f}")
        await channel.close()
    finally:
        proc.stop()


def _repeating(n: int) -> Iterator[str]:
    gen = distinct_texts()
    pool = [next(gen) for _ in range(n)]
    i = 0
    while True:
        yield pool[i % n]
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per gRPC load level")
    parser.add_argument("--single-n", type=int, default=300, help="timed single-text calls per case")
    parser.add_argument("--skip-grpc", action="store_true")
    args = parser.parse_args()
    settings = load(EmbedderSettings)
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    in_process(settings, args.single_n)
    if not args.skip_grpc:
        asyncio.run(through_grpc(args.duration))


if __name__ == "__main__":
    main()
