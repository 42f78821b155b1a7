"""Helpers for the cache tests: a real cache process (real Redis, real Milvus Lite in the test's tmp dir)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest

from weir.cache.v1 import cache_service_pb2 as pb
from weir.cache.v1 import cache_service_pb2_grpc as pb_grpc
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.errors import RemoteError, parse_rpc_error

DIM = 384
MODEL_ID = "all-minilm-l6-v2@test"


def chat(question: str, model: str = "fake-small", temperature: float = 0.0, system: str = "",
         history: tuple[tuple[str, str], ...] = ()) -> types_pb2.ChatRequest:
    """A chat request ending in `question`, after an optional system prompt and earlier turns."""
    req = types_pb2.ChatRequest(model=model)
    req.sampling.temperature = temperature
    if system:
        req.messages.add(role="system", content=system)
    for role, content in history:
        req.messages.add(role=role, content=content)
    req.messages.add(role="user", content=question)
    return req


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cosine: float, seed: int = 99) -> np.ndarray:
    """A unit vector whose cosine similarity to `v` is exactly `cosine`."""
    u = unit(seed)
    u = u - float(u @ v) * v
    u /= np.linalg.norm(u)
    w = cosine * v + np.sqrt(1.0 - cosine**2) * u
    out: np.ndarray = (w / np.linalg.norm(w)).astype(np.float32)
    return out


def embedding(v: np.ndarray, model_id: str = MODEL_ID) -> types_pb2.Embedding:
    return types_pb2.Embedding(vector=v.astype("<f4").tobytes(), dim=int(v.shape[0]), model_id=model_id)


def answer(content: str, model: str = "fake-small") -> pb.CachedAnswer:
    return pb.CachedAnswer(content=content, model=model, finish_reason="stop",
                           usage=types_pb2.Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15))


async def call_error(aw: Awaitable[object]) -> RemoteError:
    try:
        await aw
    except grpc.aio.AioRpcError as exc:
        return parse_rpc_error(exc)
    raise AssertionError("the call succeeded")


@dataclass
class Cache:
    """A running cache process and a stub on it."""

    proc: supervisor.Process
    stub: pb_grpc.CacheServiceAsyncStub

    async def store(self, tenant: str, req: types_pb2.ChatRequest, content: str, v: np.ndarray | None = None,
                    ttl_seconds: int = 0, model: str = "fake-small", model_id: str = MODEL_ID) -> pb.StoreResponse:
        sr = pb.StoreRequest(tenant=tenant, request=req, answer=answer(content, model), ttl_seconds=ttl_seconds)
        if v is not None:
            sr.embedding.CopyFrom(embedding(v, model_id))
        resp = await self.stub.Store(sr)
        assert resp.stored, resp.reason
        return resp

    async def exact(self, tenant: str, req: types_pb2.ChatRequest) -> pb.LookupExactResponse:
        return await self.stub.LookupExact(pb.LookupExactRequest(tenant=tenant, request=req), timeout=5)

    async def semantic(self, tenant: str, req: types_pb2.ChatRequest, v: np.ndarray,
                       model_id: str = MODEL_ID) -> pb.LookupSemanticResponse:
        return await self.stub.LookupSemantic(
            pb.LookupSemanticRequest(tenant=tenant, request=req, embedding=embedding(v, model_id)), timeout=5)

    async def stats(self, tenant: str = "") -> pb.GetStatsResponse:
        return await self.stub.GetStats(pb.GetStatsRequest(tenant=tenant))


StartCache = Callable[..., Awaitable[Cache]]


@pytest.fixture
async def start_cache(start_service: Callable[..., supervisor.Process],
                      redis_url: str) -> AsyncIterator[StartCache]:
    """Factory: await start_cache({"WEIR_CACHE_...": ...}) runs a cache process on the test's Redis.

    The verifier's rules decide alone (WEIR_CACHE_JUDGE=false: these tests use synthetic vectors and no
    embedder); tests/cache/test_judge.py runs the cache with the embedder's judge."""
    channels: list[grpc.aio.Channel] = []

    async def start(env: Mapping[str, str] | None = None) -> Cache:
        proc = start_service("cache", {"WEIR_CACHE_PORT": "0", "WEIR_REDIS_URL": redis_url,
                                       "WEIR_CACHE_JUDGE": "false", **(env or {})})
        channel = open_channel(proc.grpc)
        channels.append(channel)
        return Cache(proc, pb_grpc.CacheServiceStub(channel))

    yield start
    for channel in channels:
        await channel.close()


@pytest.fixture
async def cache(start_cache: StartCache) -> Cache:
    return await start_cache()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[supervisor.Process]:
    """The bundled Milvus standalone (what `weir up` runs), started once for the session."""
    from services.cache.milvus_local import available, start_milvus

    if not available():
        pytest.fail("the bundled Milvus standalone needs the `milvus` package (a project dependency) on Linux")
    proc = start_milvus(tmp_path_factory.mktemp("milvus-server"), log_dir=tmp_path_factory.mktemp("milvus-logs"))
    yield proc
    proc.stop(timeout=20)


@pytest.fixture
def server_env(milvus_server: supervisor.Process, request: pytest.FixtureRequest) -> dict[str, str]:
    """Cache settings for the session's Milvus server, with collections of this test's own."""
    prefix = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return {"WEIR_MILVUS_URI": str(milvus_server.info["uri"]), "WEIR_CACHE_MILVUS_COLLECTION_PREFIX": prefix,
            # Session: a search waits for this process' own writes, so a test reads what it just stored.
            "WEIR_CACHE_MILVUS_CONSISTENCY": "Session"}


async def check_concurrent_lookups(cache: Cache) -> None:
    """Under load, waiting lookups of one tenant go to Milvus as one multi-vector search; every lookup still
    gets its own nearest entry and only its own tenant's."""
    questions = {tenant: [(f"What is the status of project {tenant}-{i}?", unit(100 + 50 * t + i))
                          for i in range(24)] for t, tenant in enumerate(("acme", "globex"))}
    for tenant, items in questions.items():
        for q, v in items:
            await cache.store(tenant, chat(q), f"{q} -> answer for {tenant}", v)
    before = _searches(cache)
    timed = _timed_calls(cache_metrics(cache.proc))
    lookups = [(tenant, q, v) for tenant, items in questions.items() for q, v in items]
    found = await asyncio.gather(*(cache.semantic(tenant, chat(q.lower()), near(v, 0.96))
                                   for tenant, q, v in lookups))
    for (tenant, q, _), resp in zip(lookups, found, strict=True):
        assert resp.hit, (q, resp.reason)
        assert resp.answer.content == f"{q} -> answer for {tenant}"
    calls, vectors = (a - b for a, b in zip(_searches(cache), before, strict=True))
    assert vectors == len(lookups)
    assert calls < len(lookups)  # some lookups shared a search
    # Every Milvus call is timed (weir_cache_milvus_seconds), each write and each shared search once.
    values = cache_metrics(cache.proc)
    after = _timed_calls(values)
    assert after["search"] - timed["search"] == calls
    assert after["upsert"] == values["weir_cache_milvus_writes_total"] > 0


def _searches(cache: Cache) -> tuple[float, float]:
    """(Milvus search calls, query vectors searched) from the cache's Prometheus metrics."""
    values = cache_metrics(cache.proc)
    return values["weir_cache_milvus_searches_total"], values["weir_cache_milvus_searched_vectors_total"]


def _timed_calls(values: dict[str, float]) -> dict[str, float]:
    """Milvus calls timed by weir_cache_milvus_seconds, by operation, from the cache's metrics (`cache_metrics`)."""
    return {op: values.get(f'weir_cache_milvus_seconds_count{{operation="{op}"}}', 0.0) for op in ("search", "upsert")}


def cache_metrics(proc: supervisor.Process) -> dict[str, float]:
    """The cache process' own Prometheus series, by name with its labels as written ('weir_cache_x{a="b"}'; it
    must run with WEIR_METRICS_PORT set)."""
    text = httpx.get(f"http://{proc.info['metrics']}/metrics").text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("weir_cache_")}


def semantic_stores(mesh: Mesh) -> float:
    """Stores that reached both tiers so far, from the cache's metrics."""
    return cache_metrics(mesh.procs["cache"]).get('weir_cache_stores_total{outcome="exact+semantic"}', 0.0)


def until_searchable(mesh: Mesh, stores: float) -> None:
    """Waits until `stores` stores have written their semantic row: the exact tier serves an entry as soon as
    Redis holds it, while its Milvus row is still being written."""
    deadline = time.monotonic() + 20
    while semantic_stores(mesh) < stores:
        assert time.monotonic() < deadline, "the semantic row was never written"
        time.sleep(0.05)
