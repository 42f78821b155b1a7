"""What makes two chat requests "the same question": canonical forms shared by the gateway and the cache.

- `exact_key`: everything that changes the answer (model, every message, system prompt, tools, sampling
  parameters, response format, extra provider parameters), canonicalised and hashed with the tenant.
- `context_key`: the same, minus the last user message. The semantic tier only compares questions that
  share a context key, so two conversations ending in the same question after different turns never match.
- `semantic_text`: the text the embedder sees (the last user message).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from weir.common.v1 import types_pb2

# Bumped whenever the canonical form changes, so old entries stop matching instead of matching wrongly.
CANON_VERSION = "1"


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


def is_deterministic(req: types_pb2.ChatRequest) -> bool:
    """Temperature 0 (explicitly) is the only sampling setting whose answer is safe to reuse by default."""
    return req.sampling.HasField("temperature") and req.sampling.temperature == 0.0
