"""Budgets in USD per key and per team, priced from the model table; and what happens when Redis is gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.conftest import NewKey, unique_question, wait_events
from weir.devmesh import Mesh, add_gateway
from weir.kit import supervisor
from weir.kit.redis_local import LocalRedis, start_local_redis


def post(base: str, key: str, model: str = "fake-small", **body: object) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": unique_question(), "max_tokens": 30, **body})


def fake_calls(mesh: Mesh, model: str) -> int:
    return int(httpx.get(f"{mesh.fake_url}/_fake/stats").json()["by_model"].get(model, 0))


def test_budget_refuses_before_the_upstream_call(mesh: Mesh, new_key: NewKey) -> None:
    raw, view = new_key(budget_usd=0.0001, period="day")
    before = fake_calls(mesh, "fake-large")
    client = openai.OpenAI(base_url=mesh.base_url, api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-large", messages=unique_question(),
                                       max_tokens=50)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota"
    assert "budget" in body["message"] and "daily" in body["message"] and view["id"] in body["message"]
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert fake_calls(mesh, "fake-large") == before, "refused before the provider was called"
    # The cheap model fits the same budget.
    ok = post(mesh.http, raw)
    assert ok.status_code == 200 and float(ok.headers["x-weir-budget-remaining-usd"]) < 0.0001


def test_spend_follows_the_real_cost(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key(budget_usd=1)
    answers = [post(mesh.http, raw), post(mesh.http, raw, model="fake-large")]
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {raw}"},
                      json={"model": "fake-large", "messages": unique_question(), "stream": True}) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    events = wait_events(admin, 3, key=view["id"])
    prices = {"fake-small": (0.15, 0.60), "fake-large": (2.50, 10.00)}
    for a in answers:
        u = a.json()["usage"]
        event = next(e for e in events if e["id"] == a.headers["x-request-id"])
        inp, out = prices[a.headers["x-weir-model"]]
        assert event["cost_usd"] == pytest.approx((u["prompt_tokens"] * inp + u["completion_tokens"] * out) / 1e6)
    spend = admin.get(f"/v1/admin/keys/{view['id']}").json()["spend_usd"]
    assert spend == pytest.approx(sum(e["cost_usd"] for e in events), abs=1e-9), \
        "after settlement the budget counter holds the real cost, not the reservations"


def test_team_budget_applies_to_all_its_keys(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    team = "t-" + uuid.uuid4().hex[:10]
    admin.put(f"/v1/admin/teams/{team}", json={"budget_usd": 0.00005, "period": "month"})
    k1, _ = new_key(team=team)
    k2, _ = new_key(team=team)
    assert post(mesh.http, k1).status_code == 200
    wait_events(admin, 1, team=team)
    assert post(mesh.http, k2).status_code == 200
    wait_events(admin, 2, team=team)
    refused = post(mesh.http, k1)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert f"team {team}" in refused.json()["error"]["message"] and "monthly" in refused.json()["error"]["message"]
    got = admin.get(f"/v1/admin/teams/{team}").json()
    assert 0 < got["spend_usd"] <= got["budget_usd"] == 0.00005


# ---- Redis unavailable ---------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = start_local_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def replicas(mesh: Mesh, private_redis: LocalRedis) -> Iterator[tuple[supervisor.Process, supervisor.Process]]:
    """Two gateways on a Redis of their own (so it can be stopped): one with the default fail modes, one with
    rate limits failing closed and budgets failing open."""
    env = {"WEIR_REDIS_URL": private_redis.url}
    a = add_gateway(mesh, "gateway-redis-a", env)
    b = add_gateway(mesh, "gateway-redis-b", {**env, "WEIR_GATEWAY_LIMITS_FAIL_OPEN": "false",
                                              "WEIR_GATEWAY_BUDGETS_FAIL_OPEN": "true"})
    yield a, b
    for name, p in (("gateway-redis-a", a), ("gateway-redis-b", b)):
        p.stop()
        mesh.procs.pop(name, None)


def test_redis_unavailable_fails_open_for_limits_and_closed_for_budgets(
        mesh: Mesh, private_redis: LocalRedis, replicas: tuple[supervisor.Process, supervisor.Process]) -> None:
    a, b = (f"http://{p.http}" for p in replicas)
    master = {"Authorization": f"Bearer {mesh.master_key}"}

    def create(**fields: object) -> tuple[str, str]:
        doc = httpx.post(f"{a}/v1/admin/keys", headers=master, json={"team": "redis-down", **fields}).json()
        return doc["key"], doc["id"]

    limited, _ = create(rpm=1000)
    budgeted, _ = create(budget_usd=5)
    revoked, revoked_id = create(rpm=1000)
    unseen, _ = create(rpm=1000)
    for base in (a, b):
        for key in (limited, budgeted, revoked):
            assert post(base, key).status_code == 200  # each replica has now seen these keys
    assert httpx.post(f"{a}/v1/admin/keys/{revoked_id}/revoke", headers=master).status_code == 200
    time.sleep(0.5)  # the change notice reaches both replicas over pub/sub
    private_redis.stop()

    ok = post(a, limited)
    assert ok.status_code == 200 and ok.headers["x-weir-policy"] == "degraded-fail-open"
    for key in (budgeted, unseen, revoked):
        r = post(a, key)
        assert r.status_code == 503 and r.headers["x-weir-policy"] == "degraded-fail-closed", r.text
        assert r.json()["error"]["code"] == "policy_unavailable" and r.headers["retry-after"] == "1"
    assert post(a, mesh.master_key).status_code == 200, "the master key needs no store"
    assert post(b, limited).headers["x-weir-policy"] == "degraded-fail-closed"
    assert post(b, budgeted).headers["x-weir-policy"] == "degraded-fail-open"
    assert post(b, revoked).status_code == 503, "a revoked key is never admitted from memory"
    logs = Path(replicas[0].log_path or "").read_text()
    assert "admitted without limits (fail-open)" in logs and "degraded-fail-closed" in logs
