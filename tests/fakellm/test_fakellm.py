"""weir fake-llm over real HTTP: answers, SSE framing, usage, determinism, and every fault kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from weir.fakellm.server import key_fingerprint, parse_faults
from weir.kit import supervisor


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake-llm process on a free port; yields its base URL."""
    proc = supervisor.start("fake-llm", supervisor.python_module("weir.fakellm", "--port", "0", "--tokens", "12"),
                            log_dir=tmp_path_factory.mktemp("fake-logs"))
    yield f"http://{proc.http}"
    assert proc.stop() == 0  # graceful exit on SIGTERM


@pytest.fixture
async def http(fake: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(fake) as session:
        async with session.post("/_fake/reset") as r:
            assert r.status == 200
        yield session


def chat(text: str = "What is a weir?", model: str = "fake-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(http: aiohttp.ClientSession, body: dict[str, Any], fault: str = "",
               path: str = "/v1/chat/completions") -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"x-fake-fault": fault} if fault else {}
    async with http.post(path, json=body, headers=headers) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if raw else None, r


async def stream_events(http: aiohttp.ClientSession, body: dict[str, Any], fault: str = "",
                        path: str = "/v1/chat/completions") -> list[str]:
    """Raw `data:` payloads of a stream, in order (raises what the transport raises)."""
    headers = {"x-fake-fault": fault} if fault else {}
    out: list[str] = []
    async with http.post(path, json={**body, "stream": True}, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        while True:
            chunk = await r.content.readany()
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        out.append(line[6:].decode())
        assert buf == b""
    return out


# ---------------------------------------------------------------------------------------------- answers


async def test_health_and_models(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as r:
        assert r.status == 200
    async with http.get("/v1/models") as r:
        doc = await r.json()
    assert doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == ["fake-small", "fake-large"]


async def test_answer_shape_usage_and_determinism(http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, chat())
    assert status == 200
    assert doc["object"] == "chat.completion"
    assert doc["id"].startswith("chatcmpl-")
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "stop"
    text = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert text.startswith("[fake-small:")
    usage = doc["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    _, again, _ = await post(http, chat())
    assert again["choices"][0]["message"]["content"] == text
    _, other, _ = await post(http, chat("Something else entirely"))
    assert other["choices"][0]["message"]["content"] != text
    _, large, _ = await post(http, chat(model="fake-large"))
    assert large["choices"][0]["message"]["content"].startswith("[fake-large:")
    _, long, _ = await post(http, chat("word " * 400))
    assert long["usage"]["prompt_tokens"] > usage["prompt_tokens"] + 400


async def test_max_tokens_stop_and_json(http: aiohttp.ClientSession) -> None:
    _, doc, _ = await post(http, chat(max_tokens=3))
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 3
    full = (await post(http, chat()))[1]["choices"][0]["message"]["content"]
    word = full.split()[3]
    _, stopped, _ = await post(http, chat(stop=[" " + word]))
    assert stopped["choices"][0]["message"]["content"] == full[: full.index(" " + word)]
    _, js, _ = await post(http, chat(response_format={"type": "json_object"}))
    assert orjson.loads(js["choices"][0]["message"]["content"])["answer"].startswith("[fake-small:")


async def test_header_sets_answer_length(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/chat/completions", json=chat(), headers={"x-fake-tokens": "40"}) as r:
        doc = await r.json()
    assert doc["usage"]["completion_tokens"] == 40


async def test_stream_matches_unary_in_openai_format(http: aiohttp.ClientSession) -> None:
    _, unary, _ = await post(http, chat())
    events = await stream_events(http, chat(stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == unary["choices"][0]["message"]["content"]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == unary["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])

    plain = await stream_events(http, chat())
    assert all("usage" not in orjson.loads(e) for e in plain[:-1])
    assert len(plain) == len(events) - 1


async def test_openai_sdk_talks_to_it(fake: str) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=fake + "/v1", api_key="anything", max_retries=0)
    try:
        resp = await client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None and resp.usage.completion_tokens == 5
        stream = await client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True})
        parts = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        assert text == resp.choices[0].message.content
        assert parts[-1].usage is not None and parts[-1].usage.total_tokens == resp.usage.total_tokens
    finally:
        await client.close()


async def test_tool_calls_when_forced(http: aiohttp.ClientSession) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    _, doc, _ = await post(http, chat(tools=tools, tool_choice="required"))
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup"
    args = orjson.loads(call["function"]["arguments"])
    events = await stream_events(http, chat(tools=tools, tool_choice="required"))
    deltas = [orjson.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    streamed = "".join(d["tool_calls"][0]["function"].get("arguments", "") for d in deltas if "tool_calls" in d)
    assert orjson.loads(streamed) == args
    _, auto, _ = await post(http, chat(tools=tools))
    assert auto["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------------------------------------- faults


async def test_status_faults(http: aiohttp.ClientSession) -> None:
    status, doc, r = await post(http, chat(), "429:2")
    assert status == 429 and r.headers["Retry-After"] == "2"
    assert doc["error"]["code"] == "rate_limit_exceeded"
    for code in (500, 503, 502):
        status, doc, r = await post(http, chat(), str(code))
        assert status == code and doc["error"]["type"] == "server_error"
        assert "Retry-After" not in r.headers


async def test_request_rejections(http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, chat(), "context_length")
    assert status == 400 and doc["error"]["code"] == "context_length_exceeded"
    assert "maximum context length" in doc["error"]["message"]
    status, doc, _ = await post(http, chat(), "content_filter")
    assert status == 400 and doc["error"]["code"] == "content_filter"
    status, doc, _ = await post(http, chat(temperature=0.2), "reject_param:temperature")
    assert status == 400
    assert doc["error"]["type"] == "invalid_request_error" and doc["error"]["param"] == "temperature"
    status, _, _ = await post(http, chat(), "reject_param:temperature")  # only when the request sends it
    assert status == 200
    status, doc, _ = await post(http, chat(), "bogus")
    assert status == 400 and "bogus" in doc["error"]["message"]
    status, doc, _ = await post(http, {"model": "fake-small"})
    assert status == 400 and doc["error"]["param"] == "messages"


async def test_reset_and_hang(http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, chat(), "reset")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await post(http, chat(), "hang")
    status, _, _ = await post(http, chat())  # the server is fine afterwards
    assert status == 200


async def test_slow_first_token(http: aiohttp.ClientSession) -> None:
    headers = {"x-fake-fault": "slow_first_token:5000"}
    async with http.post("/v1/chat/completions", json=chat(stream=True), headers=headers) as r:
        assert r.status == 200  # headers come at once, the first token does not
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await r.content.readany()


async def test_pace_spreads_tokens_over_time(http: aiohttp.ClientSession) -> None:
    reads = 0
    async with http.post("/v1/chat/completions", json=chat(stream=True), headers={"x-fake-fault": "pace:15"}) as r:
        while await r.content.readany():
            reads += 1
    assert reads > 5  # tokens arrive one by one instead of in one write


async def test_latency_flag_and_bad_flags(tmp_path: Path) -> None:
    proc = supervisor.start("fake-llm-slow", supervisor.python_module("weir.fakellm", "--port", "0",
                                                                      "--latency-ms", "5000"), log_dir=tmp_path)
    try:
        async with aiohttp.ClientSession(f"http://{proc.http}") as http:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await post(http, chat())
    finally:
        proc.stop()
    with pytest.raises(supervisor.StartError, match="WEIR_FAKE_LLM_TOKENS must be >= 1"):
        supervisor.start("fake-llm-bad", supervisor.python_module("weir.fakellm", "--port", "0", "--tokens", "0"),
                         log_dir=tmp_path)


async def test_cut_drops_connection_after_n_chunks(http: aiohttp.ClientSession) -> None:
    got: list[str] = []
    headers = {"x-fake-fault": "cut:3"}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post("/v1/chat/completions", json=chat(stream=True), headers=headers) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    got.append(line.decode())
    assert len(got) == 3
    assert not any("[DONE]" in g for g in got)


async def test_stall_keeps_connection_open(http: aiohttp.ClientSession) -> None:
    headers = {"x-fake-fault": "stall:2"}
    async with http.post("/v1/chat/completions", json=chat(stream=True), headers=headers) as r:
        buf = b""
        with pytest.raises(TimeoutError):
            while True:
                async with asyncio.timeout(0.5):
                    buf += await r.content.readany()
        got = [e for e in buf.split(b"\n\n") if e]
        assert len(got) == 2
        assert not r.content.at_eof()


async def test_malformed_chunk(http: aiohttp.ClientSession) -> None:
    events = await stream_events(http, chat(), "malformed:2")
    assert events[-1] == "[DONE]"
    bad = []
    for i, e in enumerate(events[:-1]):
        try:
            orjson.loads(e)
        except orjson.JSONDecodeError:
            bad.append(i)
    assert bad == [2]


async def test_no_done(http: aiohttp.ClientSession) -> None:
    events = await stream_events(http, chat(), "no_done")
    assert "[DONE]" not in events
    assert orjson.loads(events[-1])["choices"][0]["finish_reason"] == "stop"


async def test_reasoning_comes_before_content(http: aiohttp.ClientSession) -> None:
    events = await stream_events(http, chat(), "reasoning")
    kinds = []
    for e in events[:-1]:
        delta = orjson.loads(e)["choices"][0]["delta"]
        if delta.get("reasoning_content"):
            kinds.append("r")
        elif delta.get("content"):
            kinds.append("c")
    assert "r" in kinds and "c" in kinds
    assert kinds == sorted(kinds, key=lambda k: k != "r")
    _, doc, _ = await post(http, chat(), "reasoning")
    assert doc["choices"][0]["message"]["reasoning_content"].startswith("Thinking")
    assert doc["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_queued_faults_per_model_and_stats(http: aiohttp.ClientSession) -> None:
    async with http.post("/_fake/faults", json={"fault": "503", "count": 2, "model": "fake-large"}) as r:
        assert r.status == 200
    assert (await post(http, chat()))[0] == 200
    assert (await post(http, chat(model="fake-large")))[0] == 503
    assert (await post(http, chat(model="fake-large")))[0] == 503
    assert (await post(http, chat(model="fake-large")))[0] == 200
    async with http.post("/_fake/faults", json={"faults": [{"fault": "500", "count": -1}]}) as r:
        assert r.status == 200
    for _ in range(3):
        assert (await post(http, chat()))[0] == 500
    async with http.post("/_fake/faults", json={"fault": "nonsense"}) as r:
        assert r.status == 400

    async with http.get("/_fake/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 7
    assert stats["by_model"] == {"fake-small": 4, "fake-large": 3}
    assert stats["faults"] == {"503": 2, "500": 3}
    assert stats["last_body"] == chat()
    assert stats["last_body_by_model"]["fake-large"] == chat(model="fake-large")

    await http.post("/_fake/reset")
    assert (await post(http, chat()))[0] == 200
    async with http.get("/_fake/stats") as r:
        assert (await r.json())["requests"] == 1


def test_parse_faults() -> None:
    f = parse_faults("reasoning, cut:4 ,429:1.5,pace:3")
    assert (f.reasoning, f.cut, f.status, f.retry_after, f.pace_ms) == (True, 4, 429, "1.5", 3.0)
    for bad in ("cut", "cut:-1", "600", "hang:3", "reject_param", "wat"):
        with pytest.raises(ValueError):
            parse_faults(bad)


# ---------------------------------------------------------------------------------------------- auth


async def test_api_key_required_when_set(tmp_path: Path) -> None:
    proc = supervisor.start("fake-llm-auth", supervisor.python_module("weir.fakellm", "--port", "0"),
                            {"WEIR_FAKE_LLM_KEY": "k-one,k-two"}, log_dir=tmp_path)
    try:
        async with aiohttp.ClientSession(f"http://{proc.http}") as http:
            async with http.post("/v1/chat/completions", json=chat()) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "invalid_api_key"
            async with http.post("/v1/chat/completions", json=chat(),
                                 headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            for key in ("k-one", "k-two", "k-two"):
                async with http.post("/v1/chat/completions", json=chat(),
                                     headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200
            async with http.post("/v1/messages", json=chat(max_tokens=5), headers={"x-api-key": "k-one"}) as r:
                assert r.status == 200
            async with http.get("/_fake/stats") as r:
                stats = await r.json()
            assert stats["keys"] == {key_fingerprint("k-one"): 2, key_fingerprint("k-two"): 2}
            assert "authorization" not in stats["last_headers"] and "x-api-key" not in stats["last_headers"]
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------- Anthropic


async def test_anthropic_messages(http: aiohttp.ClientSession) -> None:
    body = {"model": "claude-fake", "max_tokens": 50, "system": "Be brief.",
            "messages": [{"role": "user", "content": "What is a weir?"}]}
    status, doc, _ = await post(http, body, path="/v1/messages")
    assert status == 200
    assert doc["type"] == "message" and doc["stop_reason"] == "end_turn"
    text = doc["content"][0]["text"]
    assert text.startswith("[claude-fake:")
    assert doc["usage"]["output_tokens"] == 12

    events = await stream_events(http, body, path="/v1/messages")
    docs = [orjson.loads(e) for e in events]
    types = [d["type"] for d in docs]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types[-2] == "message_delta" and docs[-2]["delta"]["stop_reason"] == "end_turn"
    streamed = "".join(d["delta"]["text"] for d in docs if d["type"] == "content_block_delta")
    assert streamed == text

    _, short, _ = await post(http, {**body, "max_tokens": 2}, path="/v1/messages")
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 2
    status, err, _ = await post(http, {**body, "max_tokens": None}, path="/v1/messages")
    assert status == 400 and err["type"] == "error"
    status, err, _ = await post(http, body, "529", path="/v1/messages")
    assert status == 529 and err["error"]["type"] == "overloaded_error"
    _, refusal, _ = await post(http, body, "content_filter", path="/v1/messages")
    assert refusal["stop_reason"] == "refusal"
    thinking = await stream_events(http, body, "reasoning", path="/v1/messages")
    deltas = [orjson.loads(e)["delta"]["type"] for e in thinking if "content_block_delta" in e]
    assert deltas[0] == "thinking_delta" and deltas[-1] == "text_delta"
    no_stop = await stream_events(http, body, "no_done", path="/v1/messages")
    assert orjson.loads(no_stop[-1])["type"] == "message_delta"
