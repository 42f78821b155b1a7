from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from weir.devmesh import Mesh, add_gateway, start_mesh
from weir.kit import supervisor
from weir.kit.redis_local import LocalRedis


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: object) -> Iterator[Mesh]:
    """One mesh for the gateway tests (each test uses its own questions, so cache entries never collide)."""
    m = start_mesh(tmp_path_factory.mktemp("mesh"), redis_server.url, {
        "WEIR_JOBS_RETRY_BACKOFF_MS": "50", "WEIR_JOBS_MAX_ATTEMPTS": "2", "WEIR_WEBHOOK_BACKOFF_MS": "50",
        "WEIR_JOBS_VISIBILITY_TIMEOUT_S": "5", "WEIR_METRICS_PORT": "0",
        # Provider faults queued by one test must not open a circuit breaker that a later test runs into.
        "WEIR_REASONER_BREAKER_FAILURES": "50"})
    yield m
    m.stop()


@pytest.fixture(scope="session")
def gateway2(mesh: Mesh) -> supervisor.Process:
    """A second gateway replica on the same Redis and services (stopped with the mesh)."""
    return add_gateway(mesh, "gateway-2")


@pytest.fixture
def admin(mesh: Mesh) -> Iterator[httpx.Client]:
    """HTTP client for the gateway's admin API, with the master key."""
    with httpx.Client(base_url=mesh.http, headers={"Authorization": f"Bearer {mesh.master_key}"}) as c:
        yield c


NewKey = Callable[..., tuple[str, dict[str, Any]]]


@pytest.fixture
def new_key(admin: httpx.Client) -> NewKey:
    """Creates a key (in a fresh team unless one is given); returns (secret, key view)."""

    def create(**fields: Any) -> tuple[str, dict[str, Any]]:
        fields.setdefault("team", "t-" + uuid.uuid4().hex[:10])
        r = admin.post("/v1/admin/keys", json=fields)
        assert r.status_code == 201, r.text
        doc = r.json()
        return doc.pop("key"), doc

    return create


def unique_question(text: str = "Question") -> list[ChatCompletionMessageParam]:
    """A prompt no other test asks (hex tokenizes densely, so the gateway's count is >= the fake's)."""
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex}"}]


def wait_events(admin: httpx.Client, n: int, **filters: str) -> list[dict[str, Any]]:
    """The ledger's newest events for a key or team, once at least n are written (settlement is asynchronous)."""
    deadline = time.monotonic() + 15
    while True:
        events: list[dict[str, Any]] = admin.get("/v1/usage/events", params={"limit": 1000, **filters}).json()["data"]
        if len(events) >= n or time.monotonic() > deadline:
            assert len(events) >= n, f"only {len(events)} of {n} ledger events were written"
            return events
        time.sleep(0.05)


def gateway_log_size(mesh: Mesh) -> int:
    """Where the gateway's log ends now (an offset for `gateway_log_after`)."""
    return Path(mesh.procs["gateway"].log_path or "").stat().st_size


def gateway_log_after(mesh: Mesh, offset: int, until: str, timeout_s: float = 15.0) -> str:
    """The gateway's log written after `offset`, once it holds `until` (or the timeout passed)."""
    path = Path(mesh.procs["gateway"].log_path or "")
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_bytes()[offset:].decode(errors="replace")
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)
