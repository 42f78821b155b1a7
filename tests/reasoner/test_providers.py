"""The reasoner's pure translation layer: request bodies, responses, stream events, errors, SSE framing."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from services.reasoner import providers as p
from services.reasoner import sse, upstream
from services.reasoner.sse import EventTooLarge, SSEParser
from services.reasoner.upstream import KeyPool, Upstream
from tests.fuzzing import Fuzzer
from tests.reasoner.conftest import KEYS
from weir.common.v1 import types_pb2
from weir.mesh_config import Model, Provider


def msg(role: str, content: str = "", **kw: str) -> types_pb2.ChatMessage:
    return types_pb2.ChatMessage(role=role, content=content, **kw)


TOOLS = '[{"type":"function","function":{"name":"lookup","description":"Find","parameters":{"type":"object"}}}]'
CALLS = '[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\\"q\\": \\"weir\\"}"}}]'


def conversation() -> types_pb2.ChatRequest:
    return types_pb2.ChatRequest(
        messages=[
            msg("system", "Be brief."),
            msg("developer", "Use tools."),
            msg("user", "Look it up."),
            msg("assistant", "", tool_calls_json=CALLS),
            msg("tool", "a low dam", tool_call_id="call_1"),
            msg("user", content_parts_json='[{"type":"text","text":"And this?"},'
                '{"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}}]'),
        ],
        sampling=types_pb2.SamplingParams(temperature=0.5, stop=["END"], seed=3, frequency_penalty=0.1),
        tools_json=TOOLS, tool_choice_json='"required"', user="u-9",
        extra_json='{"thinking": {"type": "enabled", "budget_tokens": 1024}, "stream": false}',
    )


def test_anthropic_body() -> None:
    body = p.anthropic_body(conversation(), "claude-x", stream=True, default_max_tokens=777)
    assert body["model"] == "claude-x" and body["stream"] is True
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["max_tokens"] == 777
    assert body["temperature"] == 0.5 and body["stop_sequences"] == ["END"]
    assert "seed" not in body and "frequency_penalty" not in body
    assert body["tools"] == [{"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    user1, assistant, user2 = body["messages"]
    assert user1 == {"role": "user", "content": "Look it up."}
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "weir"}}]}
    # the tool result and the next user turn merge into one user turn (turns must alternate)
    assert user2["role"] == "user"
    assert user2["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a low dam"},
        {"type": "text", "text": "And this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
    ]
    unary = p.anthropic_body(conversation(), "claude-x", stream=False, default_max_tokens=777)
    assert "stream" not in unary
    limited = types_pb2.ChatRequest(messages=[msg("user", "hi")], sampling=types_pb2.SamplingParams(max_tokens=9))
    assert p.anthropic_body(limited, "c", stream=False, default_max_tokens=777)["max_tokens"] == 9


def test_anthropic_tool_choice() -> None:
    assert p.anthropic_tool_choice("auto") == {"type": "auto"}
    assert p.anthropic_tool_choice("none") == {"type": "none"}
    assert p.anthropic_tool_choice({"type": "function", "function": {"name": "f"}}) == {"type": "tool", "name": "f"}


def test_anthropic_completion() -> None:
    body = orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "tool_use",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": 1}}],
        "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 90,
                  "cache_creation_input_tokens": 0},
    })
    c = p.anthropic_completion(body)
    assert (c.content, c.reasoning, c.finish_reason, c.response_id) == ("Calling.", "hmm", "tool_calls", "msg_1")
    assert c.tool_calls == [{"id": "toolu_1", "type": "function",
                             "function": {"name": "lookup", "arguments": '{"q":1}'}}]
    assert c.usage == types_pb2.Usage(prompt_tokens=100, completion_tokens=7, total_tokens=107, cached_tokens=90)
    for stop, finish in (("end_turn", "stop"), ("max_tokens", "length"), ("refusal", "content_filter"),
                         ("stop_sequence", "stop")):
        assert p.anthropic_finish(stop) == finish


def test_anthropic_stream_events() -> None:
    state = p.StreamState()
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 12,
                                                                                          "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "let me"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "x"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"a":'}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 30}}),
    ]
    pieces: list[p.Piece] = []
    for name, doc in events:
        pieces += p.anthropic_stream_event(state, name, orjson.dumps(doc))
    assert pieces == [
        p.Piece(reasoning="let me"),
        p.Piece(content="Hi"),
        p.Piece(tool_calls=[{"index": 0, "id": "toolu_9", "type": "function",
                             "function": {"name": "f", "arguments": ""}}]),
        p.Piece(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
    ]
    assert state.finish_reason == "tool_calls" and not state.complete
    p.anthropic_stream_event(state, "message_stop", b'{"type": "message_stop"}')
    assert state.complete and state.response_id == "msg_2"
    assert state.usage == types_pb2.Usage(prompt_tokens=12, completion_tokens=30, total_tokens=42)
    with pytest.raises(p.UpstreamFailure) as err:
        p.anthropic_stream_event(state, "error",
                                 b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
    assert err.value.kind == "server_error" and err.value.transient


def test_openai_body_and_stream() -> None:
    body = p.openai_body(conversation(), "gpt-x", stream=True)
    assert body["model"] == "gpt-x"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["seed"], body["frequency_penalty"], body["stop"]) == (3, 0.1, ["END"])
    assert body["messages"][3] == {"role": "assistant", "content": None, "tool_calls": orjson.loads(CALLS)}
    assert body["messages"][4] == {"role": "tool", "content": "a low dam", "tool_call_id": "call_1"}
    assert body["messages"][5]["content"][1]["type"] == "image_url"
    assert body["tool_choice"] == "required" and body["thinking"]["budget_tokens"] == 1024
    assert "stream" not in p.openai_body(conversation(), "gpt-x", stream=False)

    state = p.StreamState()
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "r", "content": "a"},
                                      "finish_reason": None}]}
    assert p.openai_stream_event(state, orjson.dumps(chunk)) == [p.Piece(content="a", reasoning="r")]
    done = {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    p.openai_stream_event(state, orjson.dumps(done))
    assert not state.complete
    p.openai_stream_event(state, b"[DONE]")
    assert state.complete and state.usage is None  # the caller estimates it then
    with pytest.raises(p.UpstreamFailure) as err:
        p.openai_stream_event(p.StreamState(), b'{"id": "x", "choices": [')
    assert err.value.kind == "stream_malformed"


@pytest.mark.parametrize("status,body,kind", [
    (429, b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}', "rate_limited"),
    (503, b"<html>bad gateway</html>", "server_error"),
    (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "server_error"),
    (400, b'{"error": {"message": "too long", "code": "context_length_exceeded"}}', "context_length"),
    (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 9 > 5"}}',
     "context_length"),
    (400, b'{"error": {"message": "filtered", "code": "content_filter"}}', "content_filtered"),
    (400, b'{"error": {"message": "bad temperature", "param": "temperature"}}', "bad_request"),
    (401, b'{"error": {"message": "bad key"}}', "auth_failed"),
    (404, b'{"error": {"message": "no model"}}', "not_found"),
])
def test_classify_http_error(status: int, body: bytes, kind: str) -> None:
    failure = p.classify_http_error(status, body, 0.0)
    assert failure.kind == kind and failure.http_status == status and failure.message


def test_retry_after_headers() -> None:
    assert p.parse_retry_after({"Retry-After": "3"}) == 3.0
    assert p.parse_retry_after({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert p.parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 1.0
    assert p.parse_retry_after({}) == 0.0
    # a provider cannot take a deployment out for good (key rest and router cooldown follow this value)
    for huge in ("1e30", "inf", "86400000"):
        assert p.parse_retry_after({"Retry-After": huge}) == p.MAX_RETRY_AFTER_S == 3600.0
    assert p.parse_retry_after({"retry-after-ms": "1e40"}) == 3600.0
    assert p.parse_retry_after({"Retry-After": "nan"}) == 1.0 and p.parse_retry_after({"Retry-After": "-5"}) == 0.0


def test_sse_parser_survives_any_chunking() -> None:
    raw = (b": comment\r\nevent: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
           b"data: line1\ndata: line2\n\n"
           b"data: x\r\rdata: [DONE]\r\n\r\n")
    expected = [("message_start", b'{"a": 1}'), ("", b"line1\nline2"), ("", b"x"), ("", b"[DONE]")]
    for size in (1, 2, 3, 7, len(raw)):
        parser = SSEParser()
        got = []
        for i in range(0, len(raw), size):
            got += parser.feed(raw[i:i + size])
        assert got == expected, size
        assert parser.leftover() == b""
    parser = SSEParser()
    parser.feed(b"data: {\"half\":")
    assert parser.leftover() == b'data: {"half":'


def test_key_pool_rotates_and_rests() -> None:
    pool = KeyPool(["a", "b", "c"])
    assert [pool.pick("m") for _ in range(4)] == ["a", "b", "c", "a"]
    pool.rest("b", "m", 60)
    assert [pool.pick("m") for _ in range(3)] == ["c", "a", "c"]
    assert pool.pick("other") in ("a", "b", "c")
    pool.rest("a", "m", 30)
    pool.rest("c", "m", 90)
    with pytest.raises(p.UpstreamFailure) as err:
        pool.pick("m")
    assert err.value.kind == "rate_limited" and 29 < err.value.retry_after_s <= 30
    assert KeyPool([]).pick("m") is None and KeyPool([]).wait_s("m") is None


@pytest.mark.parametrize(("event", "doc"), [
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": 1.5}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": 7}),
    ("message_start", {"type": "message_start", "message": ["x"]}),
    ("message_delta", {"type": "message_delta", "delta": ["end_turn"]}),
])
def test_anthropic_events_of_an_unexpected_shape_read_as_absent(event: str, doc: dict[str, object]) -> None:
    """Found by fuzzing: each raised AttributeError, which reached the client as INTERNAL."""
    assert p.anthropic_stream_event(p.StreamState(), event, orjson.dumps(doc)) == []


def test_openai_chunks_of_an_unexpected_shape_read_as_absent() -> None:
    state = p.StreamState()
    assert p.openai_stream_event(state, b'{"choices": 1.5}') == []
    assert p.openai_stream_event(state, b'{"choices": [{"delta": {"content": 5}}]}') == [p.Piece(content="5")]
    assert state.chars == 1


def test_anthropic_body_skips_tool_calls_and_images_of_an_unexpected_shape() -> None:
    chat = types_pb2.ChatRequest(messages=[
        msg("user", content_parts_json='[{"type": "image_url", "image_url": ["not", "an", "object"]}]'),
        msg("assistant", tool_calls_json='["call", {"id": "c", "function": 3}]'), msg("user", "ok?")])
    body = p.anthropic_body(chat, "claude", stream=False, default_max_tokens=64)
    assert body["messages"][0]["content"] == [{"type": "image", "source": {"type": "url", "url": ""}}]
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "", "input": {}}]


def test_the_parsers_answer_any_json_shape_with_pieces_or_an_upstream_failure() -> None:
    """Seeded fuzzing of every response parser: whatever a provider sends, the reasoner either reads it or
    reports it as the provider's fault (UpstreamFailure), never with an exception of its own."""
    fz = Fuzzer(6)
    full = {"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "content": "hi", "reasoning_content": "t", "tool_calls": orjson.loads(CALLS)}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}}}
    chunk = {"id": "x", "choices": [{"index": 0, "finish_reason": None, "delta": {
        "content": "h", "reasoning_content": "t", "tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    message = {"id": "m", "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t", "name": "f",
                                                                       "input": {}}],
               "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2}}
    events = [{"type": "message_start", "message": {"id": "x", "usage": {"input_tokens": 3}}},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t"}},
              {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{"}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
              {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}]
    for _ in range(2000):
        def dump(doc: object) -> bytes:
            return json.dumps(fz.json(doc)).encode()  # stdlib: integers past 64 bits and NaN too

        calls = (lambda: p.openai_completion(dump(full)),
                 lambda: p.openai_stream_event(p.StreamState(), dump(chunk)),
                 lambda: p.anthropic_completion(dump(message)),
                 lambda: p.anthropic_stream_event(p.StreamState(), "", dump(fz.rnd.choice(events))))
        for call in calls:
            try:
                call()
            except p.UpstreamFailure:
                pass


async def _call_failures(fake: str, monkeypatch: pytest.MonkeyPatch) -> tuple[p.UpstreamFailure, p.UpstreamFailure]:
    """How one non-streamed and one streamed call to fake-llm fail, through an Upstream of its own."""
    monkeypatch.setenv("T_REASONER_KEY_A", KEYS["T_REASONER_KEY_A"])
    up = Upstream(Provider(name="fake", kind="openai", base_url=f"{fake}/v1", api_key_envs=("T_REASONER_KEY_A",)),
                  anthropic_max_tokens=64)
    model = Model(id="fake-small", provider="fake", upstream_model="fake-small")
    chat = types_pb2.ChatRequest(messages=[msg("user", "hi")])
    await up.start()
    try:
        with pytest.raises(p.UpstreamFailure) as unary:
            await up.complete(chat, model)
        with pytest.raises(p.UpstreamFailure) as streamed:
            async for _ in up.stream(chat, model, p.StreamState()):
                pass
        return unary.value, streamed.value
    finally:
        await up.close()


async def test_a_parser_surprise_is_the_providers_fault_not_the_reasoners(
        fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a parser ever meets a shape it did not foresee, the call fails as a bad (transient) answer from the
    provider, so the plan falls back, instead of an exception escaping the reasoner as INTERNAL."""
    def surprise(*_: object) -> None:
        raise KeyError("choices")

    monkeypatch.setattr(p, "openai_completion", surprise)
    monkeypatch.setattr(p, "openai_stream_event", surprise)
    unary, streamed = await _call_failures(fake, monkeypatch)
    assert unary.kind == "bad_response" and unary.transient and "KeyError" in str(unary)
    assert streamed.kind == "stream_malformed" and streamed.transient


def test_token_counts_past_int32_read_as_not_reported() -> None:
    """Found by fuzzing: a usage of 2**31 tokens raised ValueError building the Usage message."""
    usage = p.openai_usage({"prompt_tokens": 2**31, "completion_tokens": 5})
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (0, 5)
    big = 2**31 - 1
    usage = p.anthropic_usage({"input_tokens": big, "cache_read_input_tokens": big, "output_tokens": -3})
    assert usage is not None and usage.prompt_tokens == big and usage.completion_tokens == 0
    assert usage.total_tokens == big


def test_an_event_that_never_ends_is_refused_before_it_takes_the_memory() -> None:
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 80 + b"\n\n") == [("", b"x" * 80)]
    parser.feed(b"data: " + b"x" * 60)
    with pytest.raises(EventTooLarge):
        parser.feed(b"x" * 60)


async def test_an_oversized_answer_fails_as_the_providers_fault(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body or an event past the reasoner's bounds (16 MiB / 4 MiB; 64 KiB here) is a transient provider
    failure, read no further than the bound."""
    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 64 * 1024)
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 64 * 1024)
    async with httpx.AsyncClient() as client:
        (await client.post(f"{fake}/_fake/faults", json={"fault": "oversize:256", "count": 2})).raise_for_status()
    unary, streamed = await _call_failures(fake, monkeypatch)
    assert unary.kind == "bad_response" and "too large" in str(unary)
    assert streamed.kind == "stream_malformed" and "without ending" in str(streamed)
