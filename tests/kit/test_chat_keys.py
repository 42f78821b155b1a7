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
