"""What makes two chat requests "the same question": canonical forms shared by the gateway and the cache.

- `exact_key`: everything that changes the answer (model, every message, system prompt, tools, sampling
  parameters, response format, extra provider parameters), canonicalised and hashed with the tenant.
- `context_key`: the same, minus the last user message. The semantic tier only compares questions that
  share a context key, so two conversations ending in the same question after different turns never match.
- `semantic_text`: the text the embedder sees (the last user message).
- `violations`: what is wrong with a ChatRequest that arrived over gRPC (the REST bridge checks the same while
  parsing JSON); every service that takes one checks it with this function, so none of them meets a malformed
  JSON field or an out-of-range sampling value deeper in.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson

from weir.common.v1 import types_pb2
from weir.kit.text import cut_at_space

#: The largest value of a proto int32 field (max_tokens, n, the usage counts of a ChatResponse).
INT32_MAX = 2**31 - 1

# Bumped whenever the canonical form changes, so old entries stop matching instead of matching wrongly.
CANON_VERSION = "1"

#: Message roles of OpenAI's chat API.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SampledValue = Literal["temperature", "top_p", "presence_penalty", "frequency_penalty"]
#: Sampling values OpenAI's chat API accepts (the REST bridge checks the same ranges while parsing).
SAMPLING_RANGES: dict[SampledValue, tuple[float, float]] = {
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}
# JSON fields of a ChatRequest and of its messages, with the JSON type each must hold (None: any).
_JSON_FIELDS: tuple[tuple[str, type | None], ...] = (
    ("tools_json", list), ("tool_choice_json", None), ("response_format_json", dict), ("extra_json", dict))
_MESSAGE_JSON_FIELDS: tuple[tuple[str, type | None], ...] = (("content_parts_json", list), ("tool_calls_json", list))


def _messages(msgs: Any) -> list[list[str]]:
    return [
        [m.role, " ".join(m.content.split()) if not m.content_parts_json else m.content_parts_json,
         m.name, m.tool_call_id, m.tool_calls_json]
        for m in msgs
    ]


def _sampling(req: types_pb2.ChatRequest) -> dict[str, Any]:
    s = req.sampling
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "n"):
        if s.HasField(name):
            out[name] = getattr(s, name)
    if s.stop:
        out["stop"] = list(s.stop)
    return out


def _json(raw: str) -> Any:
    return orjson.loads(raw) if raw else None


def _json_violation(raw: str, kind: type | None) -> str | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    if kind is not None and not isinstance(value, kind):
        return f"must be a JSON {'array' if kind is list else 'object'}"
    return None


def violations(req: types_pb2.ChatRequest, prefix: str = "request.") -> list[tuple[str, str]]:
    """(field, what is wrong) for each problem of a chat request; empty when it can be served. Field names are
    the proto's, after `prefix`."""
    bad: list[tuple[str, str]] = []
    if not req.messages:
        bad.append((f"{prefix}messages", "at least one message is required"))
    elif not any(m.role == "user" for m in req.messages):
        bad.append((f"{prefix}messages", "at least one user message is required"))
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            bad.append((f"{prefix}messages[{i}].role", f"must be one of {sorted(ROLES)}"))
        for name, kind in _MESSAGE_JSON_FIELDS:
            if (problem := _json_violation(getattr(m, name), kind)) is not None:
                bad.append((f"{prefix}messages[{i}].{name}", problem))
    for name, kind in _JSON_FIELDS:
        if (problem := _json_violation(getattr(req, name), kind)) is not None:
            bad.append((f"{prefix}{name}", problem))
    s = req.sampling
    for name, (lo, hi) in SAMPLING_RANGES.items():
        if s.HasField(name) and not lo <= getattr(s, name) <= hi:
            bad.append((f"{prefix}sampling.{name}", f"must be between {lo:g} and {hi:g}"))
    if s.HasField("max_tokens") and s.max_tokens < 1:
        bad.append((f"{prefix}sampling.max_tokens", "must be at least 1"))
    if s.HasField("n") and s.n != 1:
        bad.append((f"{prefix}sampling.n", "only n=1 is supported"))
    return bad


def _base(req: types_pb2.ChatRequest) -> dict[str, Any]:
    return {
        "v": CANON_VERSION,
        "model": req.model,
        "sampling": _sampling(req),
        "tools": _json(req.tools_json),
        "tool_choice": _json(req.tool_choice_json),
        "response_format": _json(req.response_format_json),
        "extra": _json(req.extra_json),
    }


def _digest(tenant: str, doc: dict[str, Any]) -> str:
    h = hashlib.sha256(tenant.encode())
    h.update(b"\x00")
    h.update(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def exact_key(tenant: str, req: types_pb2.ChatRequest) -> str:
    """Hex key of everything that changes the answer, scoped to the tenant."""
    doc = _base(req)
    doc["messages"] = _messages(req.messages)
    return _digest(tenant, doc)


def _last_user_index(req: types_pb2.ChatRequest) -> int:
    for i in range(len(req.messages) - 1, -1, -1):
        if req.messages[i].role == "user":
            return i
    return -1


def context_key(tenant: str, req: types_pb2.ChatRequest) -> str:
    """Hex key of the request without its last user message (the semantic tier's scope)."""
    idx = _last_user_index(req)
    doc = _base(req)
    msgs = list(req.messages)
    doc["messages"] = _messages(msgs[:idx] + msgs[idx + 1 :] if idx >= 0 else msgs)
    doc["tail"] = len(msgs) - 1 - idx  # messages after the question (e.g. a prefilled assistant turn)
    return _digest(tenant, doc)


def semantic_text(req: types_pb2.ChatRequest) -> str:
    """The text whose meaning the semantic tier compares: the last user message."""
    idx = _last_user_index(req)
    return req.messages[idx].content if idx >= 0 else ""


#: The most of a question sent to the embedder: its model reads the first ~256 tokens (≈ 1,000-1,500 characters of
#: English), and the embedder refuses texts over 32 KiB (WEIR_EMBEDDER_MAX_TEXT_BYTES), which a long RAG prompt
#: passes: without this cut it lost its embedding, so its learned routing.
EMBED_MAX_CHARS = 8192


def embedding_text(text: str) -> str:
    """What the embedder is sent for `text`: all of it, or its first EMBED_MAX_CHARS cut at a space (the same
    first 256 tokens; the embedder itself tokenizes long texts from such a prefix)."""
    return cut_at_space(text, EMBED_MAX_CHARS)


def is_deterministic(req: types_pb2.ChatRequest) -> bool:
    """Temperature 0 (explicitly) is the only sampling setting whose answer is safe to reuse by default."""
    return req.sampling.HasField("temperature") and req.sampling.temperature == 0.0
