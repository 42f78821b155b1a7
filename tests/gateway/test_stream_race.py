"""Cacheable streams racing the model call against the semantic lookup (x-weir-stream-race / CacheControl.race)."""

from __future__ import annotations

import os
import signal
import uuid

import grpc
import httpx
import orjson
import pytest

from services.gateway.hub import RACE_WON
from tests.cache.conftest import semantic_stores, until_searchable
from tests.gateway.conftest import NewKey, wait_events
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

PRICE_IN = {"fake-small": 0.15}  # USD per million prompt tokens (config/fake.toml)


def stream(mesh: Mesh, key: str, content: str, race: str | None, system: str) -> tuple[httpx.Headers, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if race is not None:
        headers["x-weir-stream-race"] = race
    body = {"model": "fake-small", "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}]}
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", headers=headers, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in lines if line.startswith("data: {"))
    return r.headers, text


def seed(mesh: Mesh, key: str, question: str, system: str) -> str:
    """Asks once and waits until the answer is stored in both tiers; returns the answer."""
    stores = semantic_stores(mesh)
    _, answer = stream(mesh, key, question, "off", system)
    for _ in range(50):
        headers, _ = stream(mesh, key, question, "off", system)
        if headers["x-weir-cache"] == "exact":
            until_searchable(mesh, stores + 1)
            return answer
    raise AssertionError("the answer was never stored")


def test_a_raced_miss_streams_the_model_answer_and_stores_it(mesh: Mesh, new_key: NewKey) -> None:
    key, _ = new_key()
    system = f"You answer briefly ({uuid.uuid4().hex[:8]})."
    seed(mesh, key, "Name a river in Europe", system)  # the context holds an entry: a semantic search runs
    question = f"How long is the Danube in kilometres {uuid.uuid4().hex[:6]}?"
    headers, text = stream(mesh, key, question, "on", system)
    assert headers["x-weir-cache"] == "miss" and text
    assert "upstream_ttfb;dur=" in headers["server-timing"]
    for _ in range(50):  # stored like any other complete answer
        again, cached = stream(mesh, key, question, "off", system)
        if again["x-weir-cache"] == "exact":
            assert cached == text
            return
    raise AssertionError("the raced answer was never stored")


def test_a_raced_semantic_hit_serves_the_cache_and_is_charged_the_prompt_it_sent(
        mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    key, view = new_key()
    system = f"You help with accounts ({uuid.uuid4().hex[:8]})."
    answer = seed(mesh, key, "How do I reset my password on the company laptop?", system)
    # The model is slower to its first token than the lookup, as real providers are: the hit comes first.
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "slow_first_token:3000", "count": 3,
                                                        "model": "fake-small"}).raise_for_status()
    paraphrases = ["How can I reset the password on my company laptop?",
                   "how do i reset my password on the company laptop",
                   "How do I reset the password on my company laptop?"]
    ids = []
    for text in paraphrases:
        headers, served = stream(mesh, key, text, "on", system)
        assert headers["x-weir-cache"] == "semantic", headers.get("x-weir-cache-reason")
        assert served.strip() == answer.strip()  # the cached answer, not the raced call's
        ids.append(headers["x-request-id"])
    headers, served = stream(mesh, key, paraphrases[0], "off", system)  # the same hit without a race
    assert headers["x-weir-cache"] == "semantic" and served.strip() == answer.strip()
    ids.append(headers["x-request-id"])
    events = {e["id"]: e for e in wait_events(admin, 6, key=view["id"]) if e["id"] in ids}
    assert len(events) == 4
    charged = 0
    for request_id in ids[:3]:
        e = events[request_id]
        assert e["cache"] == "semantic" and e["status"] == "ok" and e["completion_tokens"] == 0
        assert e["saved_tokens"] > 0
        if e["prompt_tokens"]:  # the raced call had gone out: the provider bills its prompt
            charged += 1
            assert e["model"] == "fake-small"
            assert e["cost_usd"] == pytest.approx(e["prompt_tokens"] * PRICE_IN["fake-small"] / 1e6)
        else:
            assert e["cost_usd"] == 0
    # The race starts as soon as the request is routed, beside the embedding and the search: it had gone out.
    assert charged >= 1
    unraced = events[ids[3]]
    assert (unraced["prompt_tokens"], unraced["cost_usd"], unraced["cache"]) == (0, 0, "semantic")


def test_a_raced_stream_is_answered_by_the_model_when_its_first_token_beats_the_lookup(
        mesh: Mesh, new_key: NewKey) -> None:
    """The lookup is stalled (the cache process stopped): a raced stream gets the model's answer as soon as its
    first token is in, and says why; the same request unraced waits for the lookup's deadline."""
    key, _ = new_key()
    system = f"You answer briefly ({uuid.uuid4().hex[:8]})."
    seed(mesh, key, "Name a mountain in Africa", system)  # the context holds an entry: a semantic search runs
    question = f"How high is Kilimanjaro in metres {uuid.uuid4().hex[:6]}?"
    cache = mesh.procs["cache"].popen.pid
    os.kill(cache, signal.SIGSTOP)
    try:
        raced, raced_text = stream(mesh, key, question, "on", system)
        unraced, unraced_text = stream(mesh, key, question + " again", "off", system)
    finally:
        os.kill(cache, signal.SIGCONT)
    assert (raced["x-weir-cache"], raced["x-weir-cache-reason"]) == ("miss", RACE_WON)
    assert raced_text.startswith("[fake-small:")
    # Unraced, the answer waited for the stalled lookup to give up (the exact tier is read from Redis directly).
    assert unraced["x-weir-cache"] == "miss" and "deadline_exceeded" in unraced["x-weir-cache-reason"]
    assert unraced_text.startswith("[fake-small:")


def test_a_raced_call_that_fails_leaves_the_answer_to_the_lookup(mesh: Mesh, new_key: NewKey) -> None:
    """The raced model call is refused at once (a content filter, never retried): the lookup still ends, and its
    semantic hit answers the stream instead of the model's error."""
    key, _ = new_key()
    system = f"You help with travel ({uuid.uuid4().hex[:8]})."
    answer = seed(mesh, key, "How do I renew my passport?", system)
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "content_filter", "count": 1,
                                                        "model": "fake-small"}).raise_for_status()
    headers, served = stream(mesh, key, "How can I renew my passport?", "on", system)
    assert headers["x-weir-cache"] == "semantic", headers.get("x-weir-cache-reason")
    assert served.strip() == answer.strip()


def test_the_race_header_takes_on_or_off_only(mesh: Mesh) -> None:
    r = httpx.post(f"{mesh.base_url}/chat/completions",
                   headers={"Authorization": f"Bearer {mesh.master_key}", "x-weir-stream-race": "sometimes"},
                   json={"model": "fake-small", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "x-weir-stream-race" and "on or off" in error["message"]


async def test_a_grpc_stream_races_when_its_cache_control_asks(mesh: Mesh) -> None:
    """GatewayService callers ask with CacheControl.race; the raced answer is the model's, complete."""
    md = (("authorization", f"Bearer {mesh.master_key}"),)
    req = types_pb2.ChatRequest(model="fake-small", messages=[
        types_pb2.ChatMessage(role="user", content=f"What is the capital of Peru {uuid.uuid4().hex[:6]}?")])
    req.sampling.temperature = 0
    async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        events = [ev async for ev in stub.StreamChatCompletion(pb.StreamChatCompletionRequest(
            request=req, cache_control=pb.CacheControl(race=pb.UPSTREAM_RACE_ON)), metadata=md)]
    kinds = [ev.WhichOneof("event") for ev in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "delta" in kinds
    assert events[-1].end.model == "fake-small" and events[-1].end.usage.completion_tokens > 0
