"""Translation between Weir's ChatRequest and provider HTTP APIs (OpenAI chat completions, Anthropic Messages).

Pure functions and small state machines, no I/O: request bodies, response parsing, stream events, error
classification. `upstream.py` does the HTTP.

Anthropic has no equivalent for `seed`, `presence_penalty`, `frequency_penalty`, `n` or `response_format`;
those are not sent to it (extra_json still passes anything through verbatim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from weir.chat import INT32_MAX
from weir.common.v1 import types_pb2

ANTHROPIC_VERSION = "2023-06-01"

# Attempt outcomes a retry (or, once retries are spent, the next target) may fix.
TRANSIENT = frozenset({
    "rate_limited", "server_error", "connection_error", "timeout", "bad_response",
    "stream_cut", "stream_stalled", "stream_malformed", "stream_incomplete",
})
# Outcomes that are the target's problem, not the request's: no retry, but the next target may work.
TARGET_FAULTS = frozenset({"auth_failed", "not_found"})


@dataclass
class UpstreamFailure(Exception):
    """One failed provider call, classified."""

    kind: str  # an Attempt outcome: "rate_limited", "server_error", "context_length", "content_filtered", ...
    http_status: int
    message: str
    retry_after_s: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind} ({self.http_status}): {self.message}"

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT


@dataclass
class Piece:
    """One streamed increment: answer text, reasoning text or tool-call deltas (OpenAI's shape)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[Any] | None = None


@dataclass
class Completion:
    """A whole answer."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[Any] | None = None
    finish_reason: str = ""
    usage: types_pb2.Usage | None = None
    response_id: str = ""


# ---------------------------------------------------------------------------------------------- shared


def estimate_tokens(text: str) -> int:
    """~4 characters a token (used only when a provider reports no usage)."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(chat: types_pb2.ChatRequest) -> int:
    total = 3
    for m in chat.messages:
        total += 4 + estimate_tokens(m.content or m.content_parts_json) + estimate_tokens(m.tool_calls_json)
    return total + estimate_tokens(chat.tools_json)


def _loads(raw: str) -> Any:
    return orjson.loads(raw) if raw else None


def _extra(chat: types_pb2.ChatRequest) -> dict[str, Any]:
    extra = _loads(chat.extra_json)
    return dict(extra) if isinstance(extra, dict) else {}



def _usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> types_pb2.Usage:
    """Usage from a provider's counts (sums of them included), each held to what an int32 field takes."""
    prompt, completion, cached, reasoning = (min(n, INT32_MAX) for n in (prompt, completion, cached, reasoning))
    return types_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=min(prompt + completion, INT32_MAX), cached_tokens=cached,
                           reasoning_tokens=reasoning)


def _obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: a field of an unexpected type reads as absent."""
    return value if isinstance(value, dict) else {}


def _int(v: Any) -> int:
    """A token count from a provider: an integer the Usage message can hold, else 0 (read as not reported)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT32_MAX else 0


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(message, code, type) from an OpenAI or Anthropic error body; best effort for anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode(errors="replace").strip(), "", ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or ""), str(err.get("code") or ""), str(err.get("type") or "")
    if isinstance(err, str):
        return err, "", ""
    return str(doc)[:500], "", ""


#: The longest Retry-After honoured: a key rests, and the router cools the model down, for at most this long
#: (a "Retry-After: 1e30" would otherwise take a deployment out until the next restart).
MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(headers: Any) -> float:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds; HTTP dates and NaN count as 1 s), at most
    MAX_RETRY_AFTER_S. 0 when absent."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _retry_after(float(ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("Retry-After")
    if not raw:
        return 0.0
    try:
        return _retry_after(float(raw))
    except ValueError:
        return 1.0


def _retry_after(seconds: float) -> float:
    if math.isnan(seconds):
        return 1.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def classify_http_error(status: int, body: bytes, retry_after_s: float) -> UpstreamFailure:
    """Turns a non-2xx provider answer into a classified failure."""
    message, code, type_ = _error_fields(body)
    low = message.lower()
    message = message or f"HTTP {status}"
    if status == 429:
        return UpstreamFailure("rate_limited", status, message, retry_after_s)
    if status >= 500 or status == 408:
        return UpstreamFailure("server_error", status, message, retry_after_s)
    if (
        code == "context_length_exceeded"
        or status == 413
        or "maximum context length" in low
        or "prompt is too long" in low
        or "context window" in low
    ):
        return UpstreamFailure("context_length", status, message)
    if code in ("content_filter", "content_policy_violation") or type_ == "content_filter":
        return UpstreamFailure("content_filtered", status, message)
    if status in (401, 403):
        return UpstreamFailure("auth_failed", status, message)
    if status == 404:
        return UpstreamFailure("not_found", status, message)
    return UpstreamFailure("bad_request", status, message)


def _json_doc(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailure("bad_response", 200, f"response is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UpstreamFailure("bad_response", 200, "response is not a JSON object")
    return doc


# ---------------------------------------------------------------------------------------------- OpenAI


def openai_message(m: types_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.content_parts_json:
        out["content"] = orjson.loads(m.content_parts_json)
    else:
        out["content"] = m.content if (m.content or not m.tool_calls_json) else None
    if m.name:
        out["name"] = m.name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls_json:
        out["tool_calls"] = orjson.loads(m.tool_calls_json)
    return out


def openai_body(chat: types_pb2.ChatRequest, upstream_model: str, stream: bool) -> dict[str, Any]:
    """The chat-completions body: extra_json first, then every field the request sets."""
    body = _extra(chat)
    body["model"] = upstream_model
    body["messages"] = [openai_message(m) for m in chat.messages]
    s = chat.sampling
    for name in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "n"):
        if s.HasField(name):
            body[name] = getattr(s, name)
    if s.stop:
        body["stop"] = list(s.stop)
    for name, raw in (("tools", chat.tools_json), ("tool_choice", chat.tool_choice_json),
                      ("response_format", chat.response_format_json)):
        if raw:
            body[name] = orjson.loads(raw)
    if chat.user:
        body["user"] = chat.user
    if stream:
        opts = body.get("stream_options")
        body["stream"] = True
        body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def openai_usage(raw: Any) -> types_pb2.Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    pd = raw.get("prompt_tokens_details")
    cd = raw.get("completion_tokens_details")
    cached = _int(pd.get("cached_tokens")) if isinstance(pd, dict) else 0
    reasoning = _int(cd.get("reasoning_tokens")) if isinstance(cd, dict) else 0
    return _usage(prompt, completion, cached, reasoning)


def openai_completion(body: bytes) -> Completion:
    doc = _json_doc(body)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamFailure("bad_response", 200, "response has no choices")
    choice = choices[0]
    raw = choice.get("message")
    msg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    tool_calls = msg.get("tool_calls")
    return Completion(
        content=str(msg.get("content") or ""),
        reasoning=str(msg.get("reasoning_content") or msg.get("reasoning") or ""),
        tool_calls=tool_calls if isinstance(tool_calls, list) and tool_calls else None,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        usage=openai_usage(doc.get("usage")),
        response_id=str(doc.get("id") or ""),
    )


@dataclass
class StreamState:
    """What a stream told so far besides its deltas; `complete` once it ended properly."""

    finish_reason: str = ""
    usage: types_pb2.Usage | None = None
    response_id: str = ""
    ended: bool = False  # [DONE] / message_stop seen
    chars: int = 0  # streamed text, for a usage estimate when the provider sends none
    tool_blocks: dict[int, int] = field(default_factory=dict)  # Anthropic content block -> tool index

    @property
    def complete(self) -> bool:
        return self.ended and bool(self.finish_reason)


def _event_json(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure("stream_malformed", 200, f"malformed stream event: {data[:200]!r}") from None
    if not isinstance(doc, dict):
        raise UpstreamFailure("stream_malformed", 200, f"stream event is not an object: {data[:200]!r}")
    return doc


def _stream_error(err: Any) -> UpstreamFailure:
    message = str(err.get("message") or err) if isinstance(err, dict) else str(err)
    kind = str(err.get("type") or "") if isinstance(err, dict) else ""
    if kind in ("rate_limit_error", "requests", "tokens"):
        return UpstreamFailure("rate_limited", 200, message)
    return UpstreamFailure("server_error", 200, f"error event mid-stream: {message}")


def openai_stream_event(state: StreamState, data: bytes) -> list[Piece]:
    """Consumes one `data:` payload of a chat-completions stream."""
    if data.strip() == b"[DONE]":
        state.ended = True
        return []
    doc = _event_json(data)
    if "error" in doc:
        raise _stream_error(doc["error"])
    if not state.response_id:
        state.response_id = str(doc.get("id") or "")
    usage = openai_usage(doc.get("usage"))
    if usage is not None:
        state.usage = usage
    out: list[Piece] = []
    choices = doc.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = str(delta.get("content") or "")
            reasoning = str(delta.get("reasoning_content") or delta.get("reasoning") or "")
            tools = delta.get("tool_calls")
            if content or reasoning:
                out.append(Piece(content=content, reasoning=reasoning))
                state.chars += len(content) + len(reasoning)
            if isinstance(tools, list) and tools:
                out.append(Piece(tool_calls=tools))
                state.chars += len(orjson.dumps(tools))
        if choice.get("finish_reason"):
            state.finish_reason = str(choice["finish_reason"])
    return out


# ---------------------------------------------------------------------------------------------- Anthropic

_STOP_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}


def anthropic_finish(stop_reason: Any) -> str:
    return _STOP_REASONS.get(str(stop_reason or ""), str(stop_reason or "stop"))


def _anthropic_parts(parts: Any) -> list[dict[str, Any]]:
    """OpenAI content parts -> Anthropic content blocks (text and images)."""
    out: list[dict[str, Any]] = []
    for p in parts if isinstance(parts, list) else ():
        if not isinstance(p, dict):
            continue
        if p.get("type") == "text":
            out.append({"type": "text", "text": str(p.get("text", ""))})
        elif p.get("type") == "image_url":
            url = str(_obj(p.get("image_url")).get("url", ""))
            if url.startswith("data:") and ";base64," in url:
                media, _, data = url[5:].partition(";base64,")
                out.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                out.append({"type": "image", "source": {"type": "url", "url": url}})
    return out


def _anthropic_blocks(m: types_pb2.ChatMessage) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id,
                 "content": _anthropic_parts(orjson.loads(m.content_parts_json)) if m.content_parts_json
                 else m.content}]
    blocks = _anthropic_parts(orjson.loads(m.content_parts_json)) if m.content_parts_json else (
        [{"type": "text", "text": m.content}] if m.content else [])
    if m.tool_calls_json:
        for call in orjson.loads(m.tool_calls_json):
            if not isinstance(call, dict):
                continue
            fn = _obj(call.get("function"))
            args = fn.get("arguments") or "{}"
            try:
                parsed = orjson.loads(args) if isinstance(args, str) else args
            except orjson.JSONDecodeError:
                parsed = {"_raw": args}
            blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""),
                           "input": parsed})
    return blocks


def anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for t in tools if isinstance(tools, list) else ():
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict):
            tool = {"name": fn.get("name", ""), "input_schema": fn.get("parameters") or {"type": "object"}}
            if fn.get("description"):
                tool["description"] = fn["description"]
            out.append(tool)
    return out


def anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return None


def anthropic_body(chat: types_pb2.ChatRequest, upstream_model: str, stream: bool,
                   default_max_tokens: int) -> dict[str, Any]:
    """A Messages API body: system prompts to `system`, tool calls/results to blocks, max_tokens always set."""
    body = _extra(chat)
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in chat.messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _anthropic_blocks(m)
        if messages and messages[-1]["role"] == role:  # the API wants alternating turns
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for msg in messages:  # plain single-text turns as strings, the common form
        c = msg["content"]
        if len(c) == 1 and c[0]["type"] == "text":
            msg["content"] = c[0]["text"]
    body["model"] = upstream_model
    body["messages"] = messages
    if system:
        body["system"] = "\n\n".join(system)
    s = chat.sampling
    body["max_tokens"] = s.max_tokens if s.HasField("max_tokens") else body.get("max_tokens", default_max_tokens)
    if s.HasField("temperature"):
        body["temperature"] = s.temperature
    if s.HasField("top_p"):
        body["top_p"] = s.top_p
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    if chat.tools_json:
        body["tools"] = anthropic_tools(orjson.loads(chat.tools_json))
    if chat.tool_choice_json:
        choice = anthropic_tool_choice(orjson.loads(chat.tool_choice_json))
        if choice is not None:
            body["tool_choice"] = choice
    if chat.user:
        body["metadata"] = {"user_id": chat.user}
    if stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    return body


def anthropic_usage(raw: Any, output_tokens: int | None = None) -> types_pb2.Usage | None:
    if not isinstance(raw, dict):
        return None
    cached = _int(raw.get("cache_read_input_tokens"))
    prompt = _int(raw.get("input_tokens")) + cached + _int(raw.get("cache_creation_input_tokens"))
    completion = _int(raw.get("output_tokens")) if output_tokens is None else output_tokens
    return _usage(prompt, completion, cached)


def anthropic_completion(body: bytes) -> Completion:
    doc = _json_doc(body)
    if doc.get("type") == "error":
        raise _stream_error(doc.get("error"))
    blocks = doc.get("content")
    if not isinstance(blocks, list):
        raise UpstreamFailure("bad_response", 200, "response has no content")
    text: list[str] = []
    thinking: list[str] = []
    tools: list[Any] = []
    for b in blocks:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            text.append(str(b.get("text", "")))
        elif b.get("type") == "thinking":
            thinking.append(str(b.get("thinking", "")))
        elif b.get("type") == "tool_use":
            tools.append({"id": b.get("id", ""), "type": "function",
                          "function": {"name": b.get("name", ""),
                                       "arguments": orjson.dumps(b.get("input", {})).decode()}})
    return Completion(
        content="".join(text), reasoning="".join(thinking), tool_calls=tools or None,
        finish_reason=anthropic_finish(doc.get("stop_reason")),
        usage=anthropic_usage(doc.get("usage")), response_id=str(doc.get("id") or ""),
    )


def anthropic_stream_event(state: StreamState, event: str, data: bytes) -> list[Piece]:
    """Consumes one event of a Messages stream (message_start ... message_stop)."""
    doc = _event_json(data)
    kind = str(doc.get("type") or event)
    if kind == "content_block_delta":
        d = _obj(doc.get("delta"))
        dt = d.get("type")
        if dt == "text_delta":
            text = str(d.get("text", ""))
            state.chars += len(text)
            return [Piece(content=text)] if text else []
        if dt == "thinking_delta":
            text = str(d.get("thinking", ""))
            state.chars += len(text)
            return [Piece(reasoning=text)] if text else []
        if dt == "input_json_delta":
            tool = state.tool_blocks.get(_int(doc.get("index")))
            partial = str(d.get("partial_json", ""))
            state.chars += len(partial)
            if tool is None or not partial:
                return []
            return [Piece(tool_calls=[{"index": tool, "function": {"arguments": partial}}])]
        return []
    if kind == "content_block_start":
        block = _obj(doc.get("content_block"))
        if block.get("type") == "tool_use":
            tool = len(state.tool_blocks)
            state.tool_blocks[_int(doc.get("index"))] = tool
            return [Piece(tool_calls=[{"index": tool, "id": block.get("id", ""), "type": "function",
                                       "function": {"name": block.get("name", ""), "arguments": ""}}])]
        return []
    if kind == "message_start":
        msg = _obj(doc.get("message"))
        state.response_id = str(msg.get("id") or "")
        state.usage = anthropic_usage(msg.get("usage"))
    elif kind == "message_delta":
        d = _obj(doc.get("delta"))
        if d.get("stop_reason"):
            state.finish_reason = anthropic_finish(d["stop_reason"])
        usage = doc.get("usage")
        if isinstance(usage, dict) and "output_tokens" in usage:
            base = state.usage or types_pb2.Usage()
            out_tokens = _int(usage["output_tokens"])
            state.usage = _usage(base.prompt_tokens, out_tokens, base.cached_tokens)
    elif kind == "message_stop":
        state.ended = True
    elif kind == "error":
        raise _stream_error(doc.get("error"))
    return []
