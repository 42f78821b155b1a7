"""The REST bridge through a real mesh, with the official openai client where it fits and raw HTTP elsewhere."""

from __future__ import annotations

import itertools
import socket
import time
import uuid

import grpc
import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.cache.conftest import semantic_stores, until_searchable
from tests.gateway.conftest import NewKey, gateway_log_after, gateway_log_size, wait_events
from weir.devmesh import Mesh
from weir.embedder.v1 import embedder_service_pb2 as embedder_pb
from weir.embedder.v1 import embedder_service_pb2_grpc as embedder_grpc


@pytest.fixture
def client(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.base_url, api_key=mesh.master_key, max_retries=0)


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_answer_carries_weir_headers(client: openai.OpenAI) -> None:
    # A conversation context that holds an entry, so the answer waits for the embedding and the semantic search.
    context: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": f"You answer in one line ({uuid.uuid4().hex[:8]})."}]
    _wait_stored(client, [*context, *ask("Name a colour")], "fake-small")
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[*context, *ask(f"Name a prime number {uuid.uuid4()}")], temperature=0)
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "fake-small"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-weir-cache"] == "miss"
    assert raw.headers["x-weir-model"] == "fake-small"
    assert len(raw.headers["x-weir-trace-id"]) == 32
    timing = raw.headers["server-timing"]
    for hop in ("embed", "cache", "route", "upstream", "total"):
        assert f"{hop};dur=" in timing


def test_stream_matches_whole_answer_and_ends_with_done(mesh: Mesh, client: openai.OpenAI) -> None:
    messages = ask(f"Describe a river in one line {uuid.uuid4()}")
    whole = client.chat.completions.create(model="fake-large", messages=messages, temperature=0.7)
    chunks = list(client.chat.completions.create(model="fake-large", messages=messages, temperature=0.7,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The raw SSE body ends with [DONE].
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions",
                      headers={"Authorization": f"Bearer {mesh.master_key}"},
                      json={"model": "fake-large", "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-weir-model"] == "fake-large"
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = orjson.loads(events[-2][6:])["usage"]
    assert usage["completion_tokens"] > 0


def test_repeated_question_is_answered_from_the_exact_tier(client: openai.OpenAI) -> None:
    messages = ask(f"What is the boiling point of water? {uuid.uuid4()}")
    first = client.chat.completions.with_raw_response.create(model="auto", messages=messages, temperature=0)
    assert first.headers["x-weir-cache"] == "miss"
    # The store happens in the background after the answer; poll briefly for it.
    for _ in range(50):
        again = client.chat.completions.with_raw_response.create(model="auto", messages=messages, temperature=0)
        if again.headers["x-weir-cache"] == "exact":
            break
    assert again.headers["x-weir-cache"] == "exact"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.headers["x-weir-model"] == first.headers["x-weir-model"]


def _wait_stored(client: openai.OpenAI, messages: list[ChatCompletionMessageParam], model: str) -> None:
    for _ in range(50):
        r = client.chat.completions.with_raw_response.create(model=model, messages=messages, temperature=0)
        if r.headers["x-weir-cache"] == "exact":
            return
    raise AssertionError("answer was never stored")


def test_paraphrase_is_answered_from_the_semantic_tier(client: openai.OpenAI, mesh: Mesh) -> None:
    original = ask("How do I reset my password on the company laptop?")
    stores = semantic_stores(mesh)
    first = client.chat.completions.create(model="fake-small", messages=original, temperature=0)
    _wait_stored(client, original, "fake-small")
    until_searchable(mesh, stores + 1)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=ask("How can I reset the password on my company laptop?"), temperature=0)
    assert raw.headers["x-weir-cache"] == "semantic", raw.headers.get("x-weir-cache-reason")
    assert raw.parse().choices[0].message.content == first.choices[0].message.content


def test_different_numbers_are_not_served_from_the_semantic_tier(client: openai.OpenAI, mesh: Mesh) -> None:
    original = ask("Cancel my order 48213")
    stores = semantic_stores(mesh)
    client.chat.completions.create(model="fake-small", messages=original, temperature=0)
    _wait_stored(client, original, "fake-small")
    until_searchable(mesh, stores + 1)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=ask("Cancel my order 48231"), temperature=0)
    assert raw.headers["x-weir-cache"] == "miss"
    assert "refused" in raw.headers.get("x-weir-cache-reason", "")


def test_cached_answer_is_replayed_as_a_stream(client: openai.OpenAI) -> None:
    messages = ask(f"Spell the word banana {uuid.uuid4()}")
    whole = client.chat.completions.create(model="fake-small", messages=messages, temperature=0)
    _wait_stored(client, messages, "fake-small")
    with client.chat.completions.with_streaming_response.create(
            model="fake-small", messages=messages, temperature=0, stream=True) as r:
        assert r.headers["x-weir-cache"] == "exact"
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1])
    assert text == whole.choices[0].message.content


def test_nondeterministic_requests_bypass_the_cache(client: openai.OpenAI) -> None:
    messages = ask(f"Write a haiku about rain {uuid.uuid4()}")
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="fake-small", messages=messages, temperature=0.9)
        assert raw.headers["x-weir-cache"] == "miss"
        assert raw.headers["x-weir-cache-reason"].startswith("bypass")


def test_no_cache_header_skips_lookup(mesh: Mesh, client: openai.OpenAI) -> None:
    messages = ask(f"List three colours {uuid.uuid4()}")
    client.chat.completions.create(model="fake-small", messages=messages, temperature=0)
    _wait_stored(client, messages, "fake-small")
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=messages, temperature=0, extra_headers={"Cache-Control": "no-cache"})
    assert raw.headers["x-weir-cache"] == "miss"


def test_bad_request_gets_400_in_openai_shape(mesh: Mesh, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-small", messages=ask("hi"), temperature=7)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "temperature"
    for payload, param in ((b"{not json", None), (b'{"model": "fake-small"}', "messages"),
                           (b'{"model": "fake-small", "messages": [{"role": "wizard", "content": "x"}]}',
                            "messages[0].role")):
        r = httpx.post(f"{mesh.base_url}/chat/completions", content=payload,
                       headers={"Authorization": f"Bearer {mesh.master_key}", "Content-Type": "application/json"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param


def test_values_the_wire_cannot_carry_get_400_not_500(mesh: Mesh) -> None:
    """Found by fuzzing: integers beyond their proto field, a role that is not a string, a JSON field of the wrong
    type and a max-age in non-ASCII digits each once ended in an unhandled error (500)."""
    auth = {"Authorization": f"Bearer {mesh.master_key}"}
    base = {"model": "fake-small", "messages": ask("hi")}
    for extra, param in (({"max_tokens": 2**63}, "max_tokens"), ({"max_completion_tokens": 2**31},
                                                                  "max_completion_tokens"),
                         ({"seed": 2**63}, "seed"), ({"seed": -(2**63) - 1}, "seed"),
                         ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
                         ({"tools": {"type": "function"}}, "tools"), ({"response_format": "json"}, "response_format")):
        r = httpx.post(f"{mesh.base_url}/chat/completions", json={**base, **extra}, headers=auth)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param
    r = httpx.post(f"{mesh.base_url}/chat/completions", json=base,
                   headers={b"Authorization": f"Bearer {mesh.master_key}".encode(),
                            b"Cache-Control": "max-age=\u00b2".encode()})  # "²": isdigit(), but not int()
    assert r.status_code == 400 and r.json()["error"]["param"] == "Cache-Control"
    r = httpx.get(f"{mesh.http}/v1/usage/events", params={"limit": "\u00b2"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=ask("hi"))
    assert "no-such-model" in str(info.value)


def test_wrong_key_gets_401(mesh: Mesh) -> None:
    bad = openai.OpenAI(base_url=mesh.base_url, api_key="wk-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="fake-small", messages=ask("hi"))
    assert info.value.status_code == 401
    r = httpx.post(f"{mesh.base_url}/chat/completions", json={"model": "fake-small", "messages": ask("hi")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_models_and_health(mesh: Mesh, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto" and {"fake-small", "fake-large"} <= set(ids)
    assert httpx.get(f"{mesh.http}/healthz").status_code == 200
    ready = httpx.get(f"{mesh.http}/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"embedder", "cache", "router", "reasoner", "redis"}


def test_a_long_rag_prompt_keeps_its_embedding_for_routing(mesh: Mesh) -> None:
    """A last message over the embedder's 32 KiB lost its embedding ("degraded: embedder unavailable") and so
    its learned routing; the embedder is now sent the prefix its model reads."""
    context = "Context: the pump cycles every two minutes and the tank reads 38 psi. " * 600  # ~42 KB
    r = httpx.post(f"{mesh.base_url}/chat/completions", headers={"Authorization": f"Bearer {mesh.master_key}"},
                   json={"model": "auto", "temperature": 0, "messages": ask(f"{context} Why? {uuid.uuid4()}")},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert "no embedding" not in r.headers["x-weir-route-reason"] and "scorer" in r.headers["x-weir-route-reason"]
    assert not r.headers["x-weir-cache-reason"].startswith("degraded"), r.headers["x-weir-cache-reason"]


def test_unknown_route_is_json_404(mesh: Mesh) -> None:
    r = httpx.get(f"{mesh.http}/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert r.headers["server"] == "weir"  # not aiohttp's, which names its and Python's versions


def test_the_console_runs_only_its_own_files_and_cannot_be_framed(mesh: Mesh) -> None:
    """It shows tenants' text (answers, job metadata) to whoever holds a key: a Content-Security-Policy keeps an
    injected script from running even if one ever reached the page (the browser tests pass under it)."""
    for path in ("/console", "/console/console.js"):
        r = httpx.get(f"{mesh.http}{path}")
        assert r.status_code == 200
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{mesh.http}/console/../rest.py").status_code == 404


def test_a_conversation_never_seen_skips_the_semantic_search(mesh: Mesh, client: openai.OpenAI) -> None:
    """The gateway learns from the exact lookup's round trip that nothing is stored in a conversation context
    (weir/exact_cache.py), so it does not ask the semantic tier; once an answer is stored there, it does."""
    tag = uuid.uuid4().hex[:8]
    context: list[ChatCompletionMessageParam] = [{"role": "system", "content": f"You are a travel agent ({tag})."},
               {"role": "user", "content": "I am flying to Lisbon in May."},
               {"role": "assistant", "content": "Lovely: mild weather, long days."}]
    first = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[*context, *ask("What should I pack?")], temperature=0)
    assert first.headers["x-weir-cache"] == "miss"
    assert first.headers["x-weir-cache-reason"] == "miss: nothing stored in this conversation context"
    # No decision needed the embedding (no search, a concrete model): the answer did not wait for it ...
    assert "embed;dur=" not in first.headers["server-timing"], first.headers["server-timing"]
    assert "upstream;dur=" in first.headers["server-timing"]
    _wait_stored(client, [*context, *ask("What should I pack?")], "fake-small")
    # ... but the store did: a paraphrase in the same context is a semantic hit (Milvus may take a moment).
    for _ in range(50):
        same_context = client.chat.completions.with_raw_response.create(
            model="fake-small", messages=[*context, *ask("what should I pack")], temperature=0,
            extra_headers={"Cache-Control": "no-store"})  # a miss must not store this wording
        if same_context.headers["x-weir-cache"] == "semantic":
            break
        time.sleep(0.1)
    assert same_context.headers["x-weir-cache"] == "semantic", same_context.headers["x-weir-cache-reason"]
    other: list[ChatCompletionMessageParam] = [*context[:2], {"role": "assistant", "content": "Pack for rain."}]
    elsewhere = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[*other, *ask("What should I pack?")], temperature=0)
    assert elsewhere.headers["x-weir-cache"] == "miss"
    assert elsewhere.headers["x-weir-cache-reason"] == "miss: nothing stored in this conversation context"


def test_a_conversation_never_seen_is_embedded_only_to_store_its_answer(mesh: Mesh, client: openai.OpenAI) -> None:
    """Where nothing is stored in the context and the model is concrete, no decision needs the embedding: the
    store computes it after the answer, and an answer that is not stored (an error) is never embedded."""
    tag = uuid.uuid4().hex[:8]
    context: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"I am planning a garden party ({tag})."},
               {"role": "assistant", "content": "How lovely."}]
    refused, answered = f"How many chairs do I need ({tag})?", f"What food should I order ({tag})?"
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "content_filter", "count": 1, "model": "fake-small"})
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fake-small", messages=[*context, *ask(refused)], temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[*context, *ask(answered)], temperature=0)
    assert raw.headers["x-weir-cache-reason"] == "miss: nothing stored in this conversation context"
    assert "embed;dur=" not in raw.headers["server-timing"]
    _wait_stored(client, [*context, *ask(answered)], "fake-small")  # the store embeds before it writes
    with grpc.insecure_channel(mesh.procs["embedder"].grpc) as ch:
        embedder = embedder_grpc.EmbedderServiceStub(ch)
        # `cached`: the embedder's recent-text LRU already held the text, i.e. the mesh had embedded it.
        assert embedder.Embed(embedder_pb.EmbedRequest(text=answered)).cached
        assert not embedder.Embed(embedder_pb.EmbedRequest(text=refused)).cached


def test_stream_chunks_are_relayed_as_they_arrive_not_buffered(mesh: Mesh) -> None:
    """The provider paces its tokens 100 ms apart: the client sees them spread the same way (each delta passes
    through the reasoner and the gateway at once), not in one burst at the end."""

    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:100", "count": 1, "model": "fake-large"})
    arrivals: list[float] = []
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {mesh.master_key}"},
                      json={"model": "fake-large", "temperature": 0.7, "stream": True,
                            "messages": ask(f"Tell me about rivers {uuid.uuid4()}")}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) >= 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Buffered, the deltas would arrive together (gaps near 0); relayed, most gaps are near the pace.
    assert sorted(gaps)[len(gaps) // 2] > 0.05, gaps
    assert arrivals[-1] - arrivals[0] > 0.05 * (len(arrivals) - 1)


def test_a_client_that_leaves_mid_stream_cancels_the_model_call_and_pays_for_what_streamed(
        mesh: Mesh, new_key: NewKey, admin: httpx.Client) -> None:
    """Closing the connection during a stream is an ordinary event (found by fuzzing: each one logged an
    unhandled error with its traceback): logged at info, the provider's stream closed long before its end
    (24 tokens at 200 ms), and the key charged the prompt and the tokens that were streamed."""
    key, view = new_key()
    offset = gateway_log_size(mesh)
    abandoned = httpx.get(f"{mesh.fake_url}/_fake/stats").json()["streams_abandoned"]
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:200", "count": 1, "model": "fake-large"})
    left = time.monotonic()
    with httpx.stream("POST", f"{mesh.base_url}/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "fake-large", "temperature": 0.7, "stream": True,
                            "messages": ask(f"Tell me about lakes {uuid.uuid4()}")}) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                left = time.monotonic()
                break  # the first token: leave
    while httpx.get(f"{mesh.fake_url}/_fake/stats").json()["streams_abandoned"] == abandoned:
        assert time.monotonic() - left < 2.5, "the provider's stream was not closed"
        time.sleep(0.05)
    text = gateway_log_after(mesh, offset, "client disconnected mid-stream")
    assert "client disconnected mid-stream" in text
    assert '"level":"error"' not in text, text
    event = next(e for e in wait_events(admin, 1, key=view["id"]) if e["id"] == request_id)
    assert event["status"] == "cancelled" and event["prompt_tokens"] > 0
    assert 1 <= event["completion_tokens"] < 24, event


def test_malformed_http_and_a_body_never_sent_are_not_server_errors(mesh: Mesh) -> None:
    """Found by fuzzing: a header over aiohttp's 8 KiB limit, and a client that closes before sending the body
    it announced, each logged an error with a traceback. Both are the client's doing: info lines."""
    offset = gateway_log_size(mesh)
    r = httpx.get(f"{mesh.http}/v1/models", headers={"Authorization": f"Bearer {mesh.master_key}", "x-big": "a" * 9000})
    assert r.status_code == 400
    host, port = mesh.http.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: weir\r\nAuthorization: Bearer "
                  + mesh.master_key.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"model\"")
        time.sleep(0.2)
    text = gateway_log_after(mesh, offset, '"msg":"client disconnected"')
    assert "malformed HTTP request refused" in text and '"msg":"client disconnected"' in text, text
    assert '"level":"error"' not in text, text
    assert httpx.get(f"{mesh.http}/healthz").status_code == 200
