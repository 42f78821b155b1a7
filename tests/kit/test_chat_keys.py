from __future__ import annotations

from weir import chat
from weir.common.v1 import types_pb2


def req(*turns: tuple[str, str], model: str = "m", temperature: float | None = 0.0) -> types_pb2.ChatRequest:
    r = types_pb2.ChatRequest(model=model, messages=[types_pb2.ChatMessage(role=a, content=b) for a, b in turns])
    if temperature is not None:
        r.sampling.temperature = temperature
    return r


def test_exact_key_covers_everything_that_changes_the_answer() -> None:
    base = req(("system", "be brief"), ("user", "hi"))
    k = chat.exact_key("t1", base)
    assert k == chat.exact_key("t1", req(("system", "be brief"), ("user", "hi")))
    assert k == chat.exact_key("t1", req(("system", "be  brief"), ("user", "hi ")))  # whitespace only
    assert k != chat.exact_key("t2", base)
    assert k != chat.exact_key("t1", req(("system", "be long"), ("user", "hi")))
    assert k != chat.exact_key("t1", req(("system", "be brief"), ("user", "hi"), model="other"))
    assert k != chat.exact_key("t1", req(("system", "be brief"), ("user", "hi"), temperature=0.5))
    with_tools = req(("system", "be brief"), ("user", "hi"))
    with_tools.tools_json = '[{"type":"function","function":{"name":"f"}}]'
    assert k != chat.exact_key("t1", with_tools)


def test_context_key_ignores_only_the_last_question() -> None:
    a = req(("user", "I use Postgres"), ("assistant", "ok"), ("user", "how do I back it up?"))
    b = req(("user", "I use Postgres"), ("assistant", "ok"), ("user", "how can I make a backup?"))
    c = req(("user", "I use MySQL"), ("assistant", "ok"), ("user", "how do I back it up?"))
    assert chat.context_key("t", a) == chat.context_key("t", b)
    assert chat.context_key("t", a) != chat.context_key("t", c)
    assert chat.semantic_text(a) == "how do I back it up?"


def test_only_temperature_zero_is_deterministic() -> None:
    assert chat.is_deterministic(req(("user", "x")))
    assert not chat.is_deterministic(req(("user", "x"), temperature=None))
    assert not chat.is_deterministic(req(("user", "x"), temperature=0.2))


def test_a_well_formed_request_has_no_violations() -> None:
    r = req(("system", "be brief"), ("user", "hi"))
    r.tools_json = '[{"type": "function", "function": {"name": "f"}}]'
    r.tool_choice_json = '"auto"'
    r.response_format_json = '{"type": "json_object"}'
    r.extra_json = '{"logprobs": true}'
    r.messages.add(role="assistant", tool_calls_json='[{"id": "c1", "type": "function"}]')
    r.messages.add(role="tool", tool_call_id="c1", content="42")
    r.messages.add(role="user", content_parts_json='[{"type": "text", "text": "and?"}]')
    r.sampling.top_p, r.sampling.max_tokens, r.sampling.n = 1.0, 16, 1
    assert chat.violations(r) == []


def test_violations_name_each_malformed_field() -> None:
    r = req(("robot", "x"), ("user", "hi"), temperature=2.5)
    r.tools_json = "junk"
    r.tool_choice_json = "{"
    r.response_format_json = "[]"
    r.extra_json = '"text"'
    r.messages[1].content_parts_json = '{"type": "text"}'
    r.messages[1].tool_calls_json = "nope"
    r.sampling.top_p = float("nan")
    r.sampling.max_tokens = 0
    r.sampling.n = 3
    fields = [field for field, _ in chat.violations(r)]
    assert fields == [
        "request.messages[0].role", "request.messages[1].content_parts_json", "request.messages[1].tool_calls_json",
        "request.tools_json", "request.tool_choice_json", "request.response_format_json", "request.extra_json",
        "request.sampling.temperature", "request.sampling.top_p", "request.sampling.max_tokens", "request.sampling.n"]
    problems = dict(chat.violations(r))
    assert problems["request.tools_json"].startswith("not valid JSON")
    assert problems["request.response_format_json"] == "must be a JSON object"
    assert problems["request.messages[1].content_parts_json"] == "must be a JSON array"


def test_a_request_needs_a_user_message() -> None:
    assert chat.violations(types_pb2.ChatRequest(model="m")) == [("request.messages",
                                                                 "at least one message is required")]
    assert chat.violations(req(("system", "x")), prefix="") == [("messages", "at least one user message is required")]


def test_the_embedder_is_sent_a_prefix_of_a_long_question_cut_at_a_space() -> None:
    short = "How do I reset my password?"
    assert chat.embedding_text(short) == short
    long = "word " * 5000  # 25,000 characters: past the embedder's 32 KiB limit once in a UTF-8-heavy script
    cut = chat.embedding_text(long)
    assert len(cut) <= chat.EMBED_MAX_CHARS and long.startswith(cut) and cut.endswith("word")
    assert chat.embedding_text("x" * 10000) == "x" * chat.EMBED_MAX_CHARS  # no space: a plain cut
