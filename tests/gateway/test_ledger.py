"""The ledger: per-request events, daily aggregates per team/key/model, GET /v1/usage, `weir usage`, /metrics."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import NewKey, unique_question, wait_events
from weir.devmesh import Mesh
from weir.kit.redis_local import LocalRedis

PRICES = {"fake-small": (0.15, 0.60), "fake-large": (2.50, 10.00)}


def post(mesh: Mesh, key: str, messages: Sequence[Mapping[str, Any]] | None = None, model: str = "fake-small",
         **body: object) -> httpx.Response:
    r = httpx.post(f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "messages": messages or unique_question(), "max_tokens": 30, **body})
    return r


def metrics(mesh: Mesh) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{mesh.http}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_usage_aggregates_per_team_key_model_and_day(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    team = "t-" + uuid.uuid4().hex[:10]
    k1, v1 = new_key(team=team, rpm=3)
    k2, v2 = new_key(team=team)
    question = unique_question("Ledger")
    answers = [post(mesh, k1, question, temperature=0), post(mesh, k1, model="fake-large"), post(mesh, k2)]
    assert all(a.status_code == 200 for a in answers)
    tries = 0
    while tries < 50:  # the answer is stored in the background; the team's cache serves both keys
        tries += 1
        hit = post(mesh, k2, question, temperature=0)
        if hit.headers["x-weir-cache"] == "exact":
            break
    assert hit.headers["x-weir-cache"] == "exact"
    assert post(mesh, k1).status_code == 200  # its 3rd request this minute: the last one its rpm allows
    assert post(mesh, k1).status_code == 429
    events = wait_events(admin, 3 + 1 + tries, team=team)

    doc = admin.get("/v1/usage", params={"team": team, "group_by": "key,model"}).json()
    rows = {(r["key"], r["model"]): r for r in doc["data"]}
    assert set(rows) == {(v1["id"], "fake-small"), (v1["id"], "fake-large"), (v2["id"], "fake-small")}
    for key_id, model in rows:
        mine = [e for e in events if e["key"] == key_id and e["model"] == model]
        row = rows[(key_id, model)]
        assert row["requests"] == len(mine)
        assert row["prompt_tokens"] == sum(e["prompt_tokens"] for e in mine)
        assert row["completion_tokens"] == sum(e["completion_tokens"] for e in mine)
        inp, out = PRICES[model]
        assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * inp + row["completion_tokens"] * out) / 1e6)
    assert rows[(v1["id"], "fake-small")]["rejected"] == 1
    hits = rows[(v2["id"], "fake-small")]
    first = answers[0].json()["usage"]
    assert hits["hits_exact"] == 1 and hits["saved_tokens"] == first["prompt_tokens"] + first["completion_tokens"]
    assert hits["saved_usd"] == pytest.approx((first["prompt_tokens"] * 0.15 + first["completion_tokens"] * 0.6) / 1e6)
    assert hits["avg_latency_ms"] > 0
    assert doc["total"]["requests"] == sum(r["requests"] for r in rows.values())

    today = dt.datetime.now(dt.UTC).date().isoformat()
    by_day = admin.get("/v1/usage", params={"team": team, "group_by": "day", "start": today, "end": today}).json()
    assert [r["day"] for r in by_day["data"]] == [today]
    assert by_day["data"][0]["requests"] == doc["total"]["requests"]
    large = admin.get("/v1/usage", params={"team": team, "model": "fake-large", "group_by": "model"}).json()
    assert [(r["model"], r["requests"]) for r in large["data"]] == [("fake-large", 1)]
    event = next(e for e in events if e["id"] == answers[1].headers["x-request-id"])
    assert event["key"] == v1["id"] and event["team"] == team and event["model"] == "fake-large"
    assert event["latency_ms"] > 0 and event["cache"] == "miss" and event["status"] == "ok"


def test_a_key_reads_only_its_own_usage(mesh: Mesh, new_key: NewKey) -> None:
    k1, v1 = new_key()
    _, v2 = new_key(team="t-" + uuid.uuid4().hex[:10])
    assert post(mesh, k1).status_code == 200
    own = {"Authorization": f"Bearer {k1}"}
    doc = httpx.get(f"{mesh.http}/v1/usage", headers=own, params={"group_by": "key,team"}).json()
    assert [r["key"] for r in doc["data"]] == [v1["id"]]
    for params in ({"key": v2["id"]}, {"team": v2["team"]}):
        r = httpx.get(f"{mesh.http}/v1/usage", headers=own, params=params)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    events = httpx.get(f"{mesh.http}/v1/usage/events", headers=own).json()["data"]
    assert events and {e["key"] for e in events} == {v1["id"]}
    assert httpx.get(f"{mesh.http}/v1/usage").status_code == 401


def test_usage_rejects_bad_parameters(admin: httpx.Client) -> None:
    for params, param in (({"start": "2025-02-01", "end": "2025-01-01"}, "start"), ({"start": "yesterday"}, "start"),
                          ({"group_by": "colour"}, "group_by"), ({"group_by": "day,day"}, "group_by"),
                          ({"start": "2020-01-01", "end": "2025-01-01"}, "start")):
        r = admin.get("/v1/usage", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (params, r.text)
    assert admin.get("/v1/usage/events", params={"limit": "0"}).status_code == 400


def test_usage_cli_prints_a_table(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key()
    assert post(mesh, raw).status_code == 200
    wait_events(admin, 1, key=view["id"])
    env = {**os.environ, "WEIR_GATEWAY_URL": mesh.http, "WEIR_MASTER_KEY": mesh.master_key, "COLUMNS": "220"}
    out = subprocess.run([sys.executable, "-m", "weir.cli.main", "usage", "--team", view["team"], "--by", "key,model"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert view["id"] in out.stdout and "fake-small" in out.stdout and "total" in out.stdout
    assert "tokens in" in out.stdout and "cost" in out.stdout


def test_metrics_count_tokens_cost_hits_and_time_per_hop(mesh: Mesh, new_key: NewKey) -> None:
    raw, _ = new_key()
    before = metrics(mesh)
    question = unique_question("Metrics")
    first = post(mesh, raw, question, temperature=0)
    for _ in range(50):
        if post(mesh, raw, question, temperature=0).headers["x-weir-cache"] == "exact":
            break
    # Its context now holds an entry, so a new question there waits for its embedding and the semantic search
    # (the first one, in a context never seen, did not: the embedding ran beside the answer, for the store).
    post(mesh, raw, unique_question("Metrics again"), temperature=0)
    after = metrics(mesh)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    usage = first.json()["usage"]
    assert delta("weir_gateway_tokens_total", model="fake-small", kind="prompt") >= usage["prompt_tokens"]
    assert delta("weir_gateway_cost_usd_total", model="fake-small") > 0
    assert delta("weir_gateway_cache_hits_total", tier="exact") >= 1
    assert delta("weir_gateway_saved_tokens_total") >= usage["total_tokens"]
    assert delta("weir_gateway_requests_total", status="ok", cache="miss") >= 1
    for hop in ("policy", "embed", "cache", "route", "upstream"):
        assert delta("weir_gateway_hop_seconds_count", hop=hop) >= 1, hop
    assert delta("weir_gateway_overhead_seconds_count") >= 2
    assert delta("weir_gateway_request_seconds_count", cache="exact") >= 1
    assert ("weir_jobs_queue", (("state", "waiting"),)) in after  # the jobs queue is reported too
    # The per-request Redis calls went on the gateway's lane (admission, settlement and, with the default
    # timeouts, the exact-tier reads beside them).
    trips = delta("weir_redis_lane_round_trips_total", lane="policy")
    assert 1 <= trips <= delta("weir_redis_lane_commands_total", lane="policy")
    assert delta("weir_redis_lane_commands_total", lane="exact") == 0


def test_policy_survives_a_script_flush(mesh: Mesh, redis_server: LocalRedis, admin: httpx.Client,
                                        new_key: NewKey) -> None:
    """After Redis forgets its scripts (a restart, SCRIPT FLUSH) admission and settlement load them again."""
    raw, view = new_key(tpm=10_000)
    redis.Redis.from_url(redis_server.url).script_flush()
    answers = [post(mesh, raw) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    events = wait_events(admin, 3, key=view["id"])
    assert {e["id"] for e in events} == {a.headers["x-request-id"] for a in answers}
