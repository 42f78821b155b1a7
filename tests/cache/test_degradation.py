"""The cache degrading inside a whole mesh (weir.devmesh): when Milvus or the embedder is gone the exact tier
still serves and the response says so in x-weir-cache-reason; when the cache's Redis is gone requests
still reach the model. One mesh for the module; each test puts the cache back as it found it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weir.devmesh import Mesh, start_mesh
from weir.kit import supervisor
from weir.kit.redis_local import LocalRedis, free_port, start_local_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: Path) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("mesh"), redis_server.url,
                   {"WEIR_CACHE_MILVUS_TIMEOUT_S": "0.5", "WEIR_CACHE_REDIS_RETRY_AFTER_S": "0.2"}, workers=0)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> Iterator[httpx.Client]:
    """A client with a key of a fresh team."""
    with httpx.Client(base_url=mesh.http, timeout=30) as admin:
        r = admin.post("/v1/admin/keys", json={"team": "t-" + uuid.uuid4().hex[:8]},
                       headers={"Authorization": f"Bearer {mesh.master_key}"})
        assert r.status_code == 201, r.text
        key = r.json()["key"]
    with httpx.Client(base_url=mesh.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def ask(client: httpx.Client, question: str) -> httpx.Response:
    r = client.post("/chat/completions", json={"model": "fake-small", "temperature": 0,
                                               "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    return r


def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls `check` until it returns something truthy (the gateway reconnects, a background store lands)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def restart_cache(mesh: Mesh, **env: str) -> None:
    """Restarts the cache on the same port (the gateway keeps its address) with `env` on top of the mesh's."""
    old = mesh.procs["cache"]
    port = old.grpc.rsplit(":", 1)[1]
    old.stop()
    base = {k: v for k, v in mesh.gateway_env.items() if not k.startswith("WEIR_GATEWAY_")}
    mesh.procs["cache"] = supervisor.start("cache", supervisor.python_module("services.cache"),
                                           {**base, "WEIR_CACHE_PORT": port, **env}, log_dir=mesh.log_dir)


def cache_reason(r: httpx.Response) -> str:
    return str(r.headers.get("x-weir-cache-reason", ""))


def reconnected(client: httpx.Client) -> bool:
    """The gateway reaches the cache again (no longer "degraded: cache unavailable")."""
    r = ask(client, f"Is the cache back? {uuid.uuid4().hex[:6]}")
    return "cache unavailable" not in cache_reason(r)


def test_without_its_redis_the_cache_still_lets_requests_reach_the_model(mesh: Mesh, client: httpx.Client,
                                                                         tmp_path: Path) -> None:
    own = start_local_redis(tmp_path / "cache-redis")
    restart_cache(mesh, WEIR_REDIS_URL=own.url)
    try:
        assert until(lambda: reconnected(client))
        own.stop()  # the cache's Redis dies; the gateway's keeps running
        for i in range(3):
            r = ask(client, f"What is the speed of sound in water? ({i})")
            assert r.headers["x-weir-cache"] == "miss"
        exact = ask(client, "What is the speed of sound in water? (0)")  # would have been stored
        assert exact.headers["x-weir-cache"] == "miss"
    finally:
        own.stop()
        restart_cache(mesh)
    assert until(lambda: reconnected(client))


def test_without_milvus_the_exact_tier_serves_and_the_response_says_degraded(mesh: Mesh,
                                                                             client: httpx.Client) -> None:
    # Something in the semantic tier for this context first (else the gateway skips the search altogether).
    seed = f"Which planet has the most moons? {uuid.uuid4().hex[:6]}"
    ask(client, seed)
    assert until(lambda: ask(client, seed).headers["x-weir-cache"] == "exact")
    restart_cache(mesh, WEIR_MILVUS_URI=f"http://127.0.0.1:{free_port()}")
    try:
        assert until(lambda: reconnected(client))
        first = ask(client, "How many moons does Mars have?")
        assert first.headers["x-weir-cache"] == "miss"
        assert cache_reason(first).startswith("degraded: milvus unavailable"), cache_reason(first)
        again = until(lambda: (r := ask(client, "How many moons does Mars have?")).headers["x-weir-cache"] == "exact"
                      and r)
        assert again, "the exact tier never served the stored answer"
        assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        other = ask(client, "how many moons does mars have??")
        assert other.headers["x-weir-cache"] == "miss"
        assert cache_reason(other).startswith("degraded: milvus unavailable"), cache_reason(other)
    finally:
        restart_cache(mesh)
    assert until(lambda: reconnected(client))


def test_without_the_cache_service_the_gateway_still_serves_exact_hits(mesh: Mesh, client: httpx.Client) -> None:
    """The gateway reads the exact tier from Redis itself (services/gateway/exact_reader.py)."""
    question = f"What is the deepest lake in Africa? {uuid.uuid4().hex[:6]}"
    content = ask(client, question).json()["choices"][0]["message"]["content"]
    assert until(lambda: ask(client, question).headers["x-weir-cache"] == "exact")
    mesh.procs["cache"].stop()
    try:
        hit = ask(client, question)
        assert hit.headers["x-weir-cache"] == "exact" and cache_reason(hit) == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == content
        other = ask(client, f"Name a deep lake in Asia {uuid.uuid4().hex[:6]}")
        assert other.headers["x-weir-cache"] == "miss"
        assert cache_reason(other).startswith("degraded: cache unavailable"), cache_reason(other)
    finally:
        restart_cache(mesh)
    assert until(lambda: reconnected(client))


def test_without_the_embedder_the_exact_tier_serves_and_the_response_says_degraded(mesh: Mesh,
                                                                                   client: httpx.Client) -> None:
    first = ask(client, "What is the tallest waterfall in Europe?")
    content = first.json()["choices"][0]["message"]["content"]
    assert until(lambda: ask(client, "What is the tallest waterfall in Europe?").headers["x-weir-cache"] == "exact")
    mesh.procs["embedder"].stop()  # last test of the module: the embedder stays down
    hit = ask(client, "What is the tallest waterfall in Europe?")
    assert hit.headers["x-weir-cache"] == "exact"
    assert hit.json()["choices"][0]["message"]["content"] == content
    other = ask(client, "what's the tallest waterfall in europe")
    assert other.headers["x-weir-cache"] == "miss"
    assert cache_reason(other).startswith("degraded: embedder unavailable"), cache_reason(other)
