"""OpenAI chat-completions wire format: request JSON -> ChatRequest, answers and errors -> JSON/SSE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson

from weir import chat
from weir.common.v1 import types_pb2
from weir.kit.errors import RemoteError
from weir.reasoner.v1 import reasoner_service_pb2 as reasoner_pb

_KNOWN = {
    "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "n", "stream", "stream_options", "tools", "tool_choice",
    "response_format", "user",
}


@dataclass
class ApiError(Exception):
    """An error answered in OpenAI's JSON shape with an HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None
    attempts: list[reasoner_pb.Attempt] = field(default_factory=list)  # provider calls that failed before it

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{name}' must be a number", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo:g} and {hi:g}, got {value}", param=name,
                       code="invalid_value")
    return float(value)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int(body: dict[str, Any], name: str, lo: int, hi: int = chat.INT32_MAX) -> int | None:
    """An integer field within [lo, hi] (hi: the largest value its proto field holds)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}", param=name,
                       code="invalid_value")
    return value


def _content(msg: dict[str, Any], i: int) -> tuple[str, str]:
    content = msg.get("content")
    if content is None or isinstance(content, str):
        return content or "", ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or "type" not in part:
                raise ApiError(400, f"messages[{i}].content[{j}] must be an object with a 'type'",
                               param=f"messages[{i}].content[{j}]")
            if part["type"] == "text":
                texts.append(str(part.get("text", "")))
        return "\n".join(texts), orjson.dumps(content).decode()
    raise ApiError(400, f"messages[{i}].content must be a string or an array of parts",
                   param=f"messages[{i}].content", code="invalid_type")


def parse_chat_request(raw: bytes) -> tuple[types_pb2.ChatRequest, bool]:
    """Parses a /v1/chat/completions body; returns the request and whether usage is wanted in the stream."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a non-empty string", param="model",
                       code="missing_required_parameter" if model is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required and must be a non-empty array", param="messages",
                       code="missing_required_parameter" if messages is None else "invalid_type")
    req = types_pb2.ChatRequest(model=model)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = msg.get("role")
        if not isinstance(role, str) or role not in chat.ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {sorted(chat.ROLES)}, got {role!r}",
                           param=f"messages[{i}].role", code="invalid_value")
        text, parts = _content(msg, i)
        out = req.messages.add(role=role, content=text, content_parts_json=parts)
        if isinstance(msg.get("name"), str):
            out.name = msg["name"]
        if isinstance(msg.get("tool_call_id"), str):
            out.tool_call_id = msg["tool_call_id"]
        if msg.get("tool_calls"):
            out.tool_calls_json = orjson.dumps(msg["tool_calls"]).decode()
    if not any(m.role == "user" for m in req.messages):
        raise ApiError(400, "'messages' must contain at least one user message", param="messages",
                       code="invalid_value")
    s = req.sampling
    for sampled, (lo, hi) in chat.SAMPLING_RANGES.items():
        if (value := _number(body, sampled, lo, hi)) is not None:
            setattr(s, sampled, value)
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is not None:
        s.max_tokens = max_tokens
    if (seed := _int(body, "seed", INT64_MIN, INT64_MAX)) is not None:
        s.seed = seed
    n = _int(body, "n", 1)
    if n is not None and n != 1:
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")
    stop = body.get("stop")
    if isinstance(stop, str):
        s.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(x, str) for x in stop):
        s.stop.extend(stop)
    elif stop is not None:
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop", code="invalid_type")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    req.stream = stream
    for name, attr in (("tools", "tools_json"), ("tool_choice", "tool_choice_json"),
                       ("response_format", "response_format_json")):
        if body.get(name) is not None:
            setattr(req, attr, orjson.dumps(body[name]).decode())
    if isinstance(body.get("user"), str):
        req.user = body["user"]
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    if extra:
        req.extra_json = orjson.dumps(extra).decode()
    if bad := chat.violations(req, prefix=""):
        # What JSON parsing above leaves to the shared check (the type a JSON field must hold), by its REST name.
        field, problem = bad[0]
        param = field.replace("content_parts_json", "content").removesuffix("_json")
        raise ApiError(400, f"'{param}' {problem}", param=param, code="invalid_value")
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    return req, include_usage


def usage_json(u: types_pb2.Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens,
    }
    if u.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    if u.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": u.reasoning_tokens}
    return out


def completion_json(
    id_: str, created: int, model: str, content: str, finish_reason: str, usage: types_pb2.Usage,
    tool_calls_json: str = "",
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls_json:
        message["tool_calls"] = orjson.loads(tool_calls_json)
        message["content"] = content or None
    return orjson.dumps({
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason or "stop", "logprobs": None}],
        "usage": usage_json(usage),
    })


def chunk_sse(id_: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
              usage: types_pb2.Usage | None = None, choices: bool = True) -> bytes:
    doc: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                        "logprobs": None}] if choices else []}
    if usage is not None:
        doc["usage"] = usage_json(usage)
    return b"data: " + orjson.dumps(doc) + b"\n\n"


DONE_SSE = b"data: [DONE]\n\n"


def error_sse(err: ApiError) -> bytes:
    return b"data: " + err.body() + b"\n\n"


_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.ABORTED: (502, "upstream_error"),
}


def api_error_from_remote(err: RemoteError, hop: str) -> ApiError:
    """Maps a failed hop's gRPC status (with details) to an OpenAI-shaped HTTP error."""
    status, type_ = _HTTP.get(err.code, (500, "internal_error"))
    if err.code == grpc.StatusCode.INTERNAL or status == 500:
        status, type_ = 502, "upstream_error"
    param = err.field_violations[0][0] if err.field_violations else None
    headers = {"Retry-After": str(max(1, round(err.retry_after_s)))} if err.retry_after_s > 0 else None
    message = err.message or f"{hop} failed"
    if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:
        message = f"{hop} service unavailable: {message}"
    return ApiError(status, message, type=type_, param=param, code=(err.reason or None) and err.reason.lower(),
                    headers=headers)
