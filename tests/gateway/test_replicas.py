"""The proof that limits hold across replicas: two gateway processes, one Redis, 64 concurrent clients.

Tokens admitted within the window never exceed the limit plus the largest single reservation; the same for a
team's USD budget shared by several keys. (Admission reserves prompt + max_tokens atomically in Redis before
the call and settlement swaps in the real usage, so the real total stays within the limit itself whenever each
reservation bounds its request's real usage, which the test checks too.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import httpx

from tests.gateway.conftest import NewKey, wait_events
from weir.devmesh import Mesh, add_gateway
from weir.kit import supervisor

CLIENTS = 64
ROUNDS = 3


async def storm(bases: list[str], keys: list[str], model: str) -> tuple[list[dict[str, Any]], dict[int, int], float]:
    """CLIENTS clients, each sending ROUNDS requests one after another, alternating replicas and keys."""
    admitted: list[dict[str, Any]] = []
    statuses: dict[int, int] = {}
    start = time.monotonic()

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        for j in range(ROUNDS):
            base, key = bases[(i + j) % len(bases)], keys[i % len(keys)]
            body = {"model": model, "max_tokens": 40,
                    "messages": [{"role": "user", "content": f"Proof {uuid.uuid4().hex} {uuid.uuid4().hex}"}]}
            async with session.post(f"{base}/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {key}"}) as r:
                doc = await r.json()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status == 200:
                    admitted.append({"id": r.headers["x-request-id"], "base": base, "usage": doc["usage"]})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(i, session) for i in range(CLIENTS)))
    return admitted, statuses, time.monotonic() - start


def test_token_limit_holds_across_two_replicas(mesh: Mesh, gateway2: supervisor.Process, admin: httpx.Client,
                                               new_key: NewKey) -> None:
    limit = 2000
    raw, view = new_key(tpm=limit)
    bases = [mesh.http, f"http://{gateway2.http}"]
    admitted, statuses, elapsed = asyncio.run(storm(bases, [raw], "fake-small"))
    assert elapsed < 60, "the storm must fit in one rate window for this bound"
    assert statuses.get(429, 0) > 0 and set(statuses) <= {200, 429}, statuses
    assert {a["base"] for a in admitted} == set(bases), "both replicas admitted requests"
    events = {e["id"]: e for e in wait_events(admin, len(admitted), key=view["id"])}
    used = sum(a["usage"]["total_tokens"] for a in admitted)
    largest = max(events[a["id"]]["reserved_tokens"] for a in admitted)
    for a in admitted:
        assert events[a["id"]]["reserved_tokens"] >= a["usage"]["total_tokens"], "each reservation bounds usage"
    print(f"\n[tpm proof] 2 replicas, {CLIENTS} clients x {ROUNDS}: {statuses.get(200)} admitted, "
          f"{statuses.get(429)} refused; tokens admitted {used} <= limit {limit} "
          f"(+ largest reservation {largest} = {limit + largest}); {elapsed:.1f}s")
    assert used <= limit + largest
    assert used <= limit


def test_team_budget_holds_across_two_replicas(mesh: Mesh, gateway2: supervisor.Process, admin: httpx.Client,
                                               new_key: NewKey) -> None:
    budget = 0.005
    team = "t-" + uuid.uuid4().hex[:10]
    admin.put(f"/v1/admin/teams/{team}", json={"budget_usd": budget, "period": "day"})
    keys = [new_key(team=team)[0] for _ in range(4)]
    bases = [mesh.http, f"http://{gateway2.http}"]
    admitted, statuses, _ = asyncio.run(storm(bases, keys, "fake-large"))
    assert statuses.get(429, 0) > 0 and set(statuses) <= {200, 429}, statuses
    events = {e["id"]: e for e in wait_events(admin, len(admitted), team=team)}
    spent = sum(events[a["id"]]["cost_usd"] for a in admitted)
    largest = max(events[a["id"]]["reserved_usd"] for a in admitted)
    for a in admitted:
        assert events[a["id"]]["reserved_usd"] >= events[a["id"]]["cost_usd"] > 0
    counter = admin.get(f"/v1/admin/teams/{team}").json()["spend_usd"]
    print(f"\n[budget proof] 2 replicas, {CLIENTS} clients x {ROUNDS} on 4 keys: {statuses.get(200)} admitted, "
          f"{statuses.get(429)} refused; spent ${spent:.6f} <= budget ${budget} (+ largest reservation "
          f"${largest:.6f}); team counter ${counter:.6f}")
    assert spent <= budget + largest
    assert spent <= budget
    assert counter == spent or abs(counter - spent) < 1e-9 * len(admitted), "the counter holds the real cost"


def test_gateway_processes_can_share_one_port(mesh: Mesh, admin: httpx.Client) -> None:
    """WEIR_REUSE_PORT: several gateway processes serve the same REST and gRPC ports (weir up's
    WEIR_GATEWAY_PROCESSES); when one stops, the port keeps answering."""
    first = add_gateway(mesh, "gw-shared-1", {"WEIR_REUSE_PORT": "1"})
    shared = {"WEIR_REUSE_PORT": "1", "WEIR_GATEWAY_PORT": first.grpc.rsplit(":", 1)[1],
              "WEIR_GATEWAY_HTTP_PORT": first.http.rsplit(":", 1)[1]}
    second = add_gateway(mesh, "gw-shared-2", shared)
    try:
        assert second.http == first.http and second.grpc == first.grpc
        body = {"model": "fake-small", "messages": [{"role": "user", "content": "Shared port?"}]}
        auth = {"Authorization": f"Bearer {mesh.master_key}"}
        first.stop()
        for _ in range(5):  # a new connection each time: only the second process is left to take it
            r = httpx.post(f"http://{first.http}/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
    finally:
        first.stop()
        second.stop()
