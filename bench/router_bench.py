"""Router decision latency, in-process (the pure policy) and through the gRPC service.

    .venv/bin/python -m bench.router_bench [--n 20000] [--grpc-n 3000] [--concurrency 16]

In-process cases time `Router.route` alone (numpy dot over a 384-d embedding, plan and reason building),
with the length prior, a random format-1 scorer and the shipped trained scorer
(services/router/artifacts/scorer.npz, format 2: two 384-d dots, two sigmoids, a calibration lookup).
The gRPC cases start `python -m services.router` on a free port (it loads the shipped scorer by default)
and time unary Route calls from one grpc.aio client, one at a time (latency) and with several in flight
(throughput); the request's embedding names the shipped scorer's model so the scorer, not the prior, decides.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.router.health import HealthBook
from services.router.policy import Router
from services.router.scorer import Scorer, load_scorer
from services.router.settings import SHIPPED_SCORER
from weir.common.v1 import types_pb2
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.mesh_config import FAKE_CONFIG, load_mesh_config
from weir.router.v1 import router_service_pb2 as pb
from weir.router.v1 import router_service_pb2_grpc as pb_grpc

DIM = 384


def shipped_model_id() -> str:
    """The embedding model id of the shipped scorer ("minilm" when none is shipped)."""
    return load_scorer(SHIPPED_SCORER).embedding_model_id if SHIPPED_SCORER.is_file() else "minilm"


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    """p50, p99 and mean in microseconds."""
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.mean())


def row(name: str, samples_ns: list[int]) -> str:
    p50, p99, mean = percentiles(samples_ns)
    return f"  {name:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us   mean {mean:8.1f} us   n={len(samples_ns)}"


def time_calls(fn: Callable[[], object], n: int, warmup: int = 500) -> list[int]:
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def in_process(n: int) -> None:
    mesh = load_mesh_config(FAKE_CONFIG)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=DIM).astype(np.float32)
    vec /= np.linalg.norm(vec)
    emb = vec.astype("<f4").tobytes()
    prior = Scorer.prior(DIM)
    trained = Scorer(rng.normal(size=DIM), [0.3, 0.1], -2.0, embedding_model_id="minilm")
    with_prior = Router(mesh, prior, prior, HealthBook())
    with_trained = Router(mesh, trained, prior, HealthBook())
    cooled = Router(mesh, trained, prior, HealthBook())
    for _ in range(3):
        cooled.report("fake-large", "fake", success=False, http_status=503)

    print(f"in-process Router.route ({mesh.source}):")
    print(row("scorer.probability only (384-d dot)",
              time_calls(lambda: trained.probability(vec, 500, 256), n)))
    print(row("passthrough fake-small",
              time_calls(lambda: with_prior.route("fake-small", prompt_tokens=500, max_tokens=256), n)))
    print(row("auto, length prior, 384-d embedding",
              time_calls(lambda: with_prior.route("auto", prompt_tokens=500, max_tokens=256, embedding=emb,
                                                  embedding_dim=DIM, embedding_model_id="minilm"), n)))
    print(row("auto, trained scorer, 384-d embedding",
              time_calls(lambda: with_trained.route("auto", prompt_tokens=500, max_tokens=256, embedding=emb,
                                                    embedding_dim=DIM, embedding_model_id="minilm"), n)))
    print(row("auto, trained scorer, strong model cooling",
              time_calls(lambda: cooled.route("auto", prompt_tokens=5000, embedding=emb, embedding_dim=DIM,
                                              allowed_models=("auto",), quality_bias=0.2), n)))
    if SHIPPED_SCORER.is_file():
        shipped = load_scorer(SHIPPED_SCORER)
        with_shipped = Router(mesh, shipped, prior, HealthBook())
        model_id = shipped.embedding_model_id
        print(row(f"shipped scorer ({shipped.name}) probability only",
                  time_calls(lambda: shipped.probability(vec, 500, 256), n)))
        print(row(f"auto, shipped scorer ({shipped.name})",
                  time_calls(lambda: with_shipped.route("auto", prompt_tokens=500, max_tokens=256, embedding=emb,
                                                        embedding_dim=DIM, embedding_model_id=model_id), n)))


async def through_grpc(address: str, n: int, concurrency: int) -> None:
    rng = np.random.default_rng(1)
    vec = rng.normal(size=DIM).astype(np.float32)
    request = pb.RouteRequest(
        requested_model="auto", prompt_tokens=500, max_tokens=256,
        embedding=types_pb2.Embedding(vector=(vec / np.linalg.norm(vec)).astype("<f4").tobytes(), dim=DIM,
                                      model_id=shipped_model_id()),
    )
    async with open_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for _ in range(300):
            await stub.Route(request)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await stub.Route(request)
            samples.append(time.perf_counter_ns() - t0)
        print(f"through gRPC ({address}, one grpc.aio client on the same host):")
        print(row("Route auto, sequential", samples))

        per_worker = max(1, n // concurrency)
        lat: list[int] = []

        async def worker() -> None:
            for _ in range(per_worker):
                t0 = time.perf_counter_ns()
                await stub.Route(request)
                lat.append(time.perf_counter_ns() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        print(row(f"Route auto, {concurrency} in flight", lat))
        print(f"  {'throughput with ' + str(concurrency) + ' in flight':<44} {len(lat) / wall:8.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="in-process calls per case")
    parser.add_argument("--grpc-n", type=int, default=3_000, help="gRPC calls per case")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight in the concurrent case")
    args = parser.parse_args()

    in_process(args.n)
    with tempfile.TemporaryDirectory(prefix="weir-router-bench-") as tmp:
        proc = supervisor.start(
            "router", supervisor.python_module("services.router"),
            {"WEIR_CONFIG": str(FAKE_CONFIG), "WEIR_ROUTER_PORT": "0", "WEIR_LOG_LEVEL": "warning"},
            log_dir=Path(tmp),
        )
        try:
            asyncio.run(through_grpc(proc.grpc, args.grpc_n, args.concurrency))
        finally:
            proc.stop()
    print(f"(python {sys.version.split()[0]}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
