"""Cache stats and invalidation over the gateway's REST admin endpoints, and the cache's Prometheus metrics,
in a whole mesh: a key sees and clears its own team's cache only; an admin key any team's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.cache.verifier import CHECK_NAMES
from tests.cache.conftest import semantic_stores, until_searchable
from weir.devmesh import Mesh, start_mesh
from weir.kit.redis_local import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: Path) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("mesh"), redis_server.url, {"WEIR_METRICS_PORT": "0"}, workers=0)
    yield m
    m.stop()


def new_key(mesh: Mesh, team: str) -> str:
    r = httpx.post(f"{mesh.http}/v1/admin/keys", json={"team": team},
                   headers={"Authorization": f"Bearer {mesh.master_key}"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def ask(mesh: Mesh, key: str, question: str) -> str:
    r = httpx.post(f"{mesh.base_url}/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                   json={"model": "fake-small", "temperature": 0, "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.headers["x-weir-cache"]


def until_cached(mesh: Mesh, key: str, question: str) -> None:
    deadline = time.monotonic() + 20
    while ask(mesh, key, question) != "exact":
        assert time.monotonic() < deadline, "the answer was never stored"
        time.sleep(0.2)


def test_stats_and_invalidation_are_scoped_to_the_team(mesh: Mesh) -> None:
    team_a, team_b = "a-" + uuid.uuid4().hex[:8], "b-" + uuid.uuid4().hex[:8]
    key_a, key_b = new_key(mesh, team_a), new_key(mesh, team_b)
    admin = {"Authorization": f"Bearer {mesh.master_key}"}
    question = "What is the boiling point of water at sea level?"
    stores = semantic_stores(mesh)
    assert ask(mesh, key_a, question) == "miss"
    until_cached(mesh, key_a, question)
    assert ask(mesh, key_b, question) == "miss"  # the same question, another tenant
    until_cached(mesh, key_b, question)
    until_searchable(mesh, stores + 2)
    assert ask(mesh, key_a, "whats the boiling point of water at sea level??") == "semantic"

    with httpx.Client(base_url=f"{mesh.http}/v1/admin/cache", timeout=30) as http:
        # The gateway reads the exact tier itself and reports its lookups to the stats once a second.
        deadline = time.monotonic() + 5
        while True:
            stats = http.get("/stats", headers={"Authorization": f"Bearer {key_a}"})
            assert stats.status_code == 200, stats.text
            doc = stats.json()
            if (doc["hits"]["exact"] >= 1 and doc["lookups"]["exact"] >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert doc["team"] == team_a
        assert doc["entries"] == {"exact": 1, "semantic": 1}
        assert doc["hits"]["semantic"] == 1 and doc["hits"]["exact"] >= 1
        assert doc["lookups"]["exact"] >= 3 and 0 < doc["hit_rate"]["exact"] < 1
        assert doc["hit_rate"]["semantic"] == round(doc["hits"]["semantic"] / doc["lookups"]["semantic"], 4)
        assert set(CHECK_NAMES) <= set(doc["refusals_by_check"])

        forbidden = http.get("/stats", params={"team": team_b}, headers={"Authorization": f"Bearer {key_a}"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "team_forbidden"
        everyone = http.get("/stats", headers=admin).json()
        assert everyone["team"] is None and everyone["entries"]["exact"] >= 2
        assert http.get("/stats", params={"team": team_b}, headers=admin).json()["entries"]["exact"] == 1

        bad = http.post("/invalidate", json={"entry_id": "not-hex"}, headers={"Authorization": f"Bearer {key_a}"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "entry_id"
        two = http.post("/invalidate", json={"all": True, "model": "x"}, headers={"Authorization": f"Bearer {key_a}"})
        assert two.status_code == 400
        assert http.post("/invalidate", json={"all": True}, headers=admin).status_code == 400  # admin names a team

        cleared = http.post("/invalidate", json={"all": True}, headers={"Authorization": f"Bearer {key_a}"})
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {"object": "cache.invalidation", "team": team_a, "all": True, "removed": 1}
        assert ask(mesh, key_a, question) == "miss"
        assert ask(mesh, key_b, question) == "exact"  # the other team's entry is untouched

        by_model = http.post("/invalidate", json={"team": team_b, "model": "fake-small"}, headers=admin)
        assert by_model.json()["removed"] == 1
        assert http.get("/stats", headers={"Authorization": f"Bearer {key_b}"}).json()["entries"]["exact"] == 0
        assert ask(mesh, key_b, question) == "miss"


def test_the_cache_exports_prometheus_metrics(mesh: Mesh) -> None:
    key = new_key(mesh, "m-" + uuid.uuid4().hex[:8])
    ask(mesh, key, "Cancel my order 48213")
    until_cached(mesh, key, "Cancel my order 48213")
    ask(mesh, key, "Don't cancel order 48231")  # a semantic candidate the verifier refuses
    text = httpx.get(f"http://{mesh.procs['cache'].info['metrics']}/metrics").text
    # Exact hits are read by the gateway straight from Redis (its fast path): counted in the gateway's metrics.
    gateway = httpx.get(f"{mesh.http}/metrics").text
    assert 'weir_gateway_cache_hits_total{tier="exact"}' in gateway
    assert 'weir_cache_lookups_total{outcome="refused",tier="semantic"}' in text
    assert 'weir_cache_refusals_total{check="numbers"}' in text
    assert 'weir_cache_stores_total{outcome="exact+semantic"}' in text
