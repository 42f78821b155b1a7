"""`weir fake-llm`: the project's simulated LLM provider, speaking OpenAI's and Anthropic's HTTP APIs.

Answers are deterministic: the same model and messages always give the same text, different prompts give
different text, and every answer starts with ``[<model>:<hash8>]`` so a test can tell who answered. Usage is
realistic (prompt tokens estimated like tiktoken at ~4 characters a token, completion tokens = answer tokens).

Endpoints
    POST /v1/chat/completions   OpenAI chat completions, unary or SSE (`stream: true`, `stream_options`)
    POST /v1/messages           Anthropic Messages API, unary or SSE
    GET  /v1/models             the configured model ids
    GET  /healthz               liveness
    POST /_fake/faults          queue faults: {"fault": "500", "count": 2, "model": "fake-small"} (count -1: forever)
                                or {"faults": [{...}, ...]}
    GET  /_fake/stats           requests per model, keys seen (fingerprints), last request body and headers,
                                streams the caller hung up on before their end
    POST /_fake/reset           clears queued faults and stats

Faults (request header ``x-fake-fault: <spec>`` or queued; a spec is a comma-separated list):
    429[:<retry-after s>]  any other 4xx/5xx code   reset   hang   slow_first_token:<ms>   pace:<ms per token>
    cut:<n>   stall:<n>   malformed:<n>   no_done   context_length   content_filter   reject_param:<name>   reasoning
    oversize:<KiB> (a streamed event that never ends, or a body padded to that size)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from weir.kit.config import Port, env, load_or_exit
from weir.kit.logging import setup_logging
from weir.kit.server import install_event_loop, wait_for_stop_signal, write_ready_file

log = logging.getLogger("weir.fakellm")

FINGERPRINT = "fp_weirfake"
_VOCAB = (
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "an",
    "be", "this", "from", "or", "are", "not", "but", "have", "which", "one", "all", "were", "when", "we",
    "there", "can", "more", "if", "no", "out", "so", "said", "what", "up", "its", "about", "into", "than",
    "them", "only", "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first",
    "any", "like", "now", "my", "such", "make", "over", "our", "even", "most", "after", "also", "did",
    "many", "well", "model", "token", "answer", "stream", "cache", "route", "mesh", "weir", "river",
    "stone", "water", "light", "quick", "small", "large", "fast", "slow",
)


@dataclass(frozen=True)
class FakeLLMSettings:
    """How the fake provider listens and answers (CLI flags override these)."""

    host: str = env("WEIR_FAKE_LLM_HOST", "127.0.0.1", help="interface to bind")
    port: Port = env("WEIR_FAKE_LLM_PORT", 8090, help="0 picks a free port")
    latency_ms: float = env("WEIR_FAKE_LLM_LATENCY_MS", 0.0, help="time to first token / to the whole answer")
    per_token_ms: float = env("WEIR_FAKE_LLM_PER_TOKEN_MS", 0.0, help="added for every output token")
    tokens: int = env("WEIR_FAKE_LLM_TOKENS", 24, help="answer length in tokens")
    api_keys: tuple[str, ...] = env("WEIR_FAKE_LLM_KEY", (), secret=True, help="accepted keys (comma-separated)")
    models: tuple[str, ...] = env("WEIR_FAKE_LLM_MODELS", ("fake-small", "fake-large"), help="ids in /v1/models")
    log_level: str = env("WEIR_LOG_LEVEL", "info", help="debug, info, warning or error")
    grace_s: float = env("WEIR_SHUTDOWN_GRACE_S", 5.0, help="seconds in-flight requests get on SIGTERM")
    ready_file: Path | None = env("WEIR_READY_FILE", None, help="written with the bound address once serving")

    def validate(self) -> list[str]:
        problems = []
        if self.tokens < 1:
            problems.append("WEIR_FAKE_LLM_TOKENS must be >= 1")
        if self.latency_ms < 0 or self.per_token_ms < 0:
            problems.append("latencies must be >= 0")
        return problems


# ---------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Faults:
    """What to break in one response. -1 means "not set" for the chunk-indexed faults."""

    status: int = 0
    retry_after: str = ""
    reset: bool = False
    hang: bool = False
    slow_first_token_ms: float = 0.0
    pace_ms: float = -1.0  # per-token delay of this response, instead of the server's per_token_ms
    cut: int = -1
    stall: int = -1
    malformed: int = -1
    no_done: bool = False
    context_length: bool = False
    content_filter: bool = False
    reject_param: str = ""
    reasoning: bool = False
    oversize_kib: int = 0  # a streamed event, or a whole body, this many KiB long

    def kinds(self) -> list[str]:
        out = []
        for name, default in (
            ("status", 0), ("reset", False), ("hang", False), ("slow_first_token_ms", 0.0), ("pace_ms", -1.0),
            ("cut", -1),
            ("stall", -1), ("malformed", -1), ("no_done", False), ("context_length", False),
            ("content_filter", False), ("reject_param", ""), ("reasoning", False), ("oversize_kib", 0),
        ):
            value = getattr(self, name)
            if value != default:
                out.append(str(value) if name == "status" else name)
        return out


NO_FAULTS = Faults()


def parse_faults(spec: str) -> Faults:
    """Parses ``"429:2"``, ``"reasoning,cut:5"`` ... into Faults; raises ValueError naming the bad part."""
    f = NO_FAULTS
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, arg = part.partition(":")
        name = name.strip().lower()
        arg = arg.strip()
        try:
            if name.isdigit():
                code = int(name)
                if not 400 <= code <= 599:
                    raise ValueError("status must be 4xx or 5xx")
                if arg:
                    float(arg)
                f = replace(f, status=code, retry_after=arg)
            elif name in ("reset", "hang", "no_done", "context_length", "content_filter", "reasoning"):
                if arg:
                    raise ValueError("takes no argument")
                flag: dict[str, Any] = {name: True}
                f = replace(f, **flag)
            elif name == "slow_first_token":
                f = replace(f, slow_first_token_ms=_non_negative(float(arg)))
            elif name == "pace":
                f = replace(f, pace_ms=_non_negative(float(arg)))
            elif name in ("cut", "stall", "malformed"):
                index: dict[str, Any] = {name: int(_non_negative(int(arg)))}
                f = replace(f, **index)
            elif name == "oversize":
                f = replace(f, oversize_kib=int(_non_negative(int(arg))))
            elif name == "reject_param":
                if not arg:
                    raise ValueError("needs a parameter name")
                f = replace(f, reject_param=arg)
            else:
                raise ValueError("unknown fault")
        except ValueError as exc:
            raise ValueError(f"bad fault {part!r}: {exc}") from None
    return f


def _padded(doc: dict[str, Any], faults: Faults) -> bytes:
    """The JSON body, padded to `oversize` KiB by a field no client reads."""
    if faults.oversize_kib:
        doc = {**doc, "padding": "x" * (faults.oversize_kib * 1024)}
    return orjson.dumps(doc)


def _non_negative(x: float) -> float:
    if x < 0:
        raise ValueError("must be >= 0")
    return x


@dataclass
class _Queued:
    faults: Faults
    spec: str
    model: str
    remaining: int  # -1: until reset


class FaultQueue:
    """Faults for the next N requests, optionally only for one model, applied in the order queued."""

    def __init__(self) -> None:
        self._entries: list[_Queued] = []

    def add(self, spec: str, count: int, model: str) -> None:
        if count == 0 or count < -1:
            raise ValueError("count must be >= 1, or -1 for every request until reset")
        self._entries.append(_Queued(parse_faults(spec), spec, model, count))

    def take(self, model: str) -> Faults:
        for i, entry in enumerate(self._entries):
            if entry.model and entry.model != model:
                continue
            if entry.remaining > 0:
                entry.remaining -= 1
                if entry.remaining == 0:
                    del self._entries[i]
            return entry.faults
        return NO_FAULTS

    def pending(self) -> list[dict[str, Any]]:
        return [{"fault": e.spec, "model": e.model, "remaining": e.remaining} for e in self._entries]

    def clear(self) -> None:
        self._entries.clear()


def key_fingerprint(key: str) -> str:
    """How /_fake/stats names a key: the first 12 hex digits of its SHA-256 (keys are never echoed)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class Stats:
    requests: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    streams_abandoned: int = 0  # streams whose client closed the connection before the end
    last_body: Any = None
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body_by_model: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "by_endpoint": dict(self.by_endpoint),
            "keys": dict(self.keys),
            "faults": dict(self.faults),
            "streams_abandoned": self.streams_abandoned,
            "last_body": self.last_body,
            "last_headers": self.last_headers,
            "last_body_by_model": self.last_body_by_model,
        }


# ---------------------------------------------------------------------------------------------- answers


def estimate_tokens(text: str) -> int:
    """~4 characters a token, like tiktoken on English text."""
    return (len(text) + 3) // 4


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("image_url", "image", "input_audio"):
                total += 85
            elif kind in ("tool_use", "tool_result"):
                total += estimate_tokens(orjson.dumps(part).decode())
            else:
                total += estimate_tokens(str(part.get("text") or part.get("thinking") or ""))
    return total


def count_prompt_tokens(messages: list[Any], system: Any = None, tools: Any = None) -> int:
    """Prompt tokens the way OpenAI's cookbook counts them: 3 per message + role + content, 3 to prime."""
    total = 3 + (_content_tokens(system) + 4 if system else 0)
    for m in messages:
        if not isinstance(m, dict):
            continue
        total += 4 + _content_tokens(m.get("content"))
        if m.get("name"):
            total += 1 + estimate_tokens(str(m["name"]))
        if m.get("tool_calls"):
            total += estimate_tokens(orjson.dumps(m["tool_calls"]).decode())
    if tools:
        total += estimate_tokens(orjson.dumps(tools).decode())
    return total


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Answer:
    model: str
    tag: str
    reasoning: list[str]
    pieces: list[str]
    finish: str  # "stop" | "length" | "tool_calls" | "content_filter"
    prompt_tokens: int
    tool: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        tool = estimate_tokens(self.tool.name + self.tool.arguments) if self.tool else 0
        return len(self.reasoning) + len(self.pieces) + tool


def _words(seed: bytes, n: int) -> list[str]:
    out: list[str] = []
    block = seed
    while len(out) < n:
        block = hashlib.blake2b(block, digest_size=32).digest()
        out.extend(_VOCAB[b % len(_VOCAB)] for b in block)
    return out[:n]


def make_answer(
    model: str,
    prompt: Any,
    prompt_tokens: int,
    length: int,
    *,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    reasoning: bool = False,
    json_mode: bool = False,
    tool_name: str = "",
) -> Answer:
    """The deterministic answer of `model` to `prompt` (any JSON-able form of the conversation)."""
    digest = hashlib.blake2b(orjson.dumps([model, prompt], option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    tag = digest.hex()[:8]
    budget = max_tokens if max_tokens is not None and max_tokens > 0 else 1 << 30
    thoughts: list[str] = []
    if reasoning:
        thoughts = ["Thinking"] + [" " + w for w in _words(digest + b"r", max(1, length // 2))]
        thoughts = thoughts[:budget]
        budget -= len(thoughts)
    if tool_name:
        args = orjson.dumps({"query": " ".join(_words(digest + b"t", 4)), "ref": tag}).decode()
        tool = ToolCall(id="call_" + digest.hex()[:24], name=tool_name, arguments=args)
        return Answer(model, tag, thoughts, [], "tool_calls", prompt_tokens, tool)
    pieces = [f"[{model}:{tag}]"] + [" " + w for w in _words(digest, length - 1)]
    if json_mode:
        pieces = ['{"answer": "', *pieces, '"}']
    finish = "stop"
    if stop:
        pieces = _apply_stop(pieces, stop)
    if len(pieces) > budget:
        pieces, finish = pieces[: max(0, budget)], "length"
    return Answer(model, tag, thoughts, pieces, finish, prompt_tokens)


def _apply_stop(pieces: list[str], stops: list[str]) -> list[str]:
    """The pieces up to (not including) the first stop sequence, as the provider would return them."""
    text = "".join(pieces)
    hits = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if not hits:
        return pieces
    end = min(hits)
    out: list[str] = []
    pos = 0
    for p in pieces:
        if pos + len(p) > end:
            if end > pos:
                out.append(p[: end - pos])
            break
        out.append(p)
        pos += len(p)
    return out


def _tool_name(tools: Any, choice: Any, *, anthropic: bool) -> str:
    """The tool the fake calls: forced by tool_choice ("required"/"any" or a named function), else none."""
    if not isinstance(tools, list) or not tools:
        return ""
    if anthropic:
        if isinstance(choice, dict) and choice.get("type") == "tool":
            return str(choice.get("name", ""))
        if isinstance(choice, dict) and choice.get("type") == "any":
            return str(tools[0].get("name", "")) if isinstance(tools[0], dict) else ""
        return ""
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name", ""))
    if choice == "required" and isinstance(tools[0], dict):
        return str((tools[0].get("function") or {}).get("name", ""))
    return ""


# ---------------------------------------------------------------------------------------------- errors


def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    doc = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers)


def anthropic_error(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    doc = {"type": "error", "error": {"type": type_, "message": message}}
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers)


_OPENAI_STATUS = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Request not allowed."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_ANTHROPIC_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
}


def _status_error(status: int, retry_after: str, anthropic: bool) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    if anthropic:
        kind = _ANTHROPIC_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return anthropic_error(status, kind, f"Simulated {status} ({kind}).", headers)
    type_, code, message = _OPENAI_STATUS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Simulated {status}.")
    )
    return openai_error(status, message, type_, code, headers=headers)


# ---------------------------------------------------------------------------------------------- server


class FakeLLM:
    """The aiohttp application and its state (faults, stats)."""

    def __init__(self, settings: FakeLLMSettings) -> None:
        self.settings = settings
        self.faults = FaultQueue()
        self.stats = Stats()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_post("/_fake/faults", self.queue_faults)
        self.app.router.add_get("/_fake/faults", self.list_faults)
        self.app.router.add_get("/_fake/stats", self.get_stats)
        self.app.router.add_post("/_fake/reset", self.reset)
        self._n = 0

    # -- control ---------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, dumps=_dumps)

    async def list_models(self, request: web.Request) -> web.Response:
        if not self._key_ok(request, anthropic=False):
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "weir-fake"}
                for m in self.settings.models]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def queue_faults(self, request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
            items = doc["faults"] if isinstance(doc, dict) and "faults" in doc else [doc]
            for item in items:
                self.faults.add(str(item["fault"]), int(item.get("count", 1)), str(item.get("model") or ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return openai_error(400, f"bad fault request: {exc}", "invalid_request_error")
        return web.json_response({"queued": self.faults.pending()}, dumps=_dumps)

    async def list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"queued": self.faults.pending()}, dumps=_dumps)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json(), dumps=_dumps)

    async def reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.stats = Stats()
        return web.json_response({"status": "reset"}, dumps=_dumps)

    # -- shared request handling -------------------------------------------------------------------

    def _key(self, request: web.Request, anthropic: bool) -> str:
        if anthropic and request.headers.get("x-api-key"):
            return request.headers["x-api-key"]
        auth = request.headers.get("Authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else ""

    def _key_ok(self, request: web.Request, anthropic: bool) -> bool:
        return not self.settings.api_keys or self._key(request, anthropic) in self.settings.api_keys

    def _next_id(self) -> str:
        self._n += 1
        return f"{self._n:012x}{int(time.time()):x}"

    async def _begin(self, request: web.Request, anthropic: bool) -> tuple[dict[str, Any], Faults] | web.Response:
        """Auth, body, stats and fault selection common to both APIs; a Response when the request ends here."""
        path = request.path
        if not self._key_ok(request, anthropic):
            if anthropic:
                return anthropic_error(401, "authentication_error", "invalid x-api-key")
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _bad_request(f"We could not parse the JSON body of your request: {exc}", anthropic)
        model = body.get("model") if isinstance(body, dict) else None
        problem = ""
        if not isinstance(model, str) or not model:
            problem = "model"
        elif not isinstance(body.get("messages"), list) or not body["messages"]:
            problem = "messages"
        elif anthropic and not isinstance(body.get("max_tokens"), int):
            problem = "max_tokens"
        if problem:
            if anthropic:
                return _bad_request(f"{problem}: Field required", anthropic)
            return openai_error(400, f"you must provide a valid '{problem}' parameter", "invalid_request_error",
                                "missing_required_parameter", problem)
        assert isinstance(model, str)
        stats = self.stats
        stats.requests += 1
        stats.by_model[model] += 1
        stats.by_endpoint[path] += 1
        key = self._key(request, anthropic)
        if key:
            stats.keys[key_fingerprint(key)] += 1
        stats.last_body = body
        stats.last_body_by_model[model] = body
        stats.last_headers = {k.lower(): v for k, v in request.headers.items()
                              if k.lower() not in ("authorization", "x-api-key")}
        spec = request.headers.get("x-fake-fault")
        if spec:
            try:
                faults = parse_faults(spec)
            except ValueError as exc:
                return _bad_request(f"x-fake-fault: {exc}", anthropic)
        else:
            faults = self.faults.take(model)
        for kind in faults.kinds():
            stats.faults[kind] += 1
        return body, faults

    async def _early_fault(self, request: web.Request, body: dict[str, Any], faults: Faults, prompt_tokens: int,
                           anthropic: bool) -> web.StreamResponse | None:
        """Faults that replace the whole response (statuses, reset, hang, 400s)."""
        if faults is NO_FAULTS:
            return None
        if faults.reset:
            transport = request.transport
            if transport is not None:
                transport.abort()
            await _forever()
        if faults.hang:
            await _forever()
        if faults.status:
            return _status_error(faults.status, faults.retry_after, anthropic)
        if faults.reject_param and faults.reject_param in body:
            name = faults.reject_param
            if anthropic:
                return anthropic_error(400, "invalid_request_error", f"{name}: Extra inputs are not permitted")
            return openai_error(400, f"Unsupported parameter: '{name}' is not supported with this model.",
                                "invalid_request_error", "unsupported_parameter", name)
        if faults.context_length:
            limit = max(1, prompt_tokens // 2)
            if anthropic:
                return anthropic_error(400, "invalid_request_error",
                                       f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")
            return openai_error(
                400,
                f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
                f"{prompt_tokens} tokens. Please reduce the length of the messages.",
                "invalid_request_error", "context_length_exceeded", "messages",
            )
        if faults.content_filter and not anthropic:
            return openai_error(
                400,
                "The response was filtered due to the prompt triggering the content management policy.",
                "invalid_request_error", "content_filter", "prompt",
            )
        return None

    async def _stream(self, request: web.Request, events: list[bytes], done: bytes,
                      faults: Faults) -> web.StreamResponse:
        """Sends SSE events with the configured latency and the stream faults (cut, stall, malformed, no_done)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        s = self.settings
        first_delay = (s.latency_ms + faults.slow_first_token_ms) / 1000
        gap = (faults.pace_ms if faults.pace_ms >= 0 else s.per_token_ms) / 1000
        if faults.oversize_kib:  # one `data:` line that never ends
            await resp.write(b"data: ")
            for _ in range(faults.oversize_kib // 64 + 1):
                await resp.write(b"x" * 65536)
        plain = faults is NO_FAULTS or faults.kinds() == ["reasoning"]
        if plain and first_delay == 0 and gap == 0:
            await resp.write(b"".join(events) + done)
            await resp.write_eof()
            return resp
        try:
            for i, event in enumerate(events):
                if i == faults.cut:
                    _close(request)
                    return resp
                if i == faults.stall:
                    await _forever()
                if i == 0 and first_delay:
                    await asyncio.sleep(first_delay)
                elif i > 0 and gap:
                    await asyncio.sleep(gap)
                if i == faults.malformed:
                    await resp.write(b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "\n\n')
                await resp.write(event)
        except (ConnectionResetError, asyncio.CancelledError):  # the caller hung up (handlers are cancelled then)
            self.stats.streams_abandoned += 1
            raise
        if faults.cut >= len(events):
            _close(request)
            return resp
        if faults.stall >= len(events):
            await _forever()
        if not faults.no_done:
            await resp.write(done)
        await resp.write_eof()
        return resp

    async def _delay_whole(self, faults: Faults, tokens: int) -> None:
        s = self.settings
        per_token = faults.pace_ms if faults.pace_ms >= 0 else s.per_token_ms
        delay = (s.latency_ms + faults.slow_first_token_ms + per_token * tokens) / 1000
        if delay:
            await asyncio.sleep(delay)

    # -- OpenAI ------------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request, anthropic=False)
        if isinstance(begun, web.Response):
            return begun
        body, faults = begun
        model: str = body["model"]
        messages: list[Any] = body["messages"]
        tools = body.get("tools")
        prompt_tokens = count_prompt_tokens(messages, tools=tools)
        early = await self._early_fault(request, body, faults, prompt_tokens, anthropic=False)
        if early is not None:
            return early
        stop = body.get("stop")
        fmt = body.get("response_format")
        answer = make_answer(
            model, [messages, tools], prompt_tokens, _length(request, self.settings.tokens),
            max_tokens=_int_or_none(body.get("max_completion_tokens", body.get("max_tokens"))),
            stop=[stop] if isinstance(stop, str) else stop if isinstance(stop, list) else None,
            reasoning=faults.reasoning,
            json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"),
            tool_name=_tool_name(tools, body.get("tool_choice"), anthropic=False),
        )
        cid = "chatcmpl-" + self._next_id()
        created = int(time.time())
        usage = _openai_usage(answer)
        if body.get("stream"):
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            events = _openai_chunks(answer, cid, created, usage if include_usage else None)
            return await self._stream(request, events, b"data: [DONE]\n\n", faults)
        await self._delay_whole(faults, answer.completion_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text if not answer.tool else None,
                                   "refusal": None}
        if answer.reasoning:
            message["reasoning_content"] = "".join(answer.reasoning)
        if answer.tool:
            message["tool_calls"] = [{"id": answer.tool.id, "type": "function",
                                      "function": {"name": answer.tool.name, "arguments": answer.tool.arguments}}]
        doc = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}],
            "usage": usage,
        }
        return web.Response(body=_padded(doc, faults), content_type="application/json")

    # -- Anthropic ---------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request, anthropic=True)
        if isinstance(begun, web.Response):
            return begun
        body, faults = begun
        model: str = body["model"]
        messages: list[Any] = body["messages"]
        tools = body.get("tools")
        system = body.get("system")
        prompt_tokens = count_prompt_tokens(messages, system=system, tools=tools)
        early = await self._early_fault(request, body, faults, prompt_tokens, anthropic=True)
        if early is not None:
            return early
        thinking = body.get("thinking")
        stops = body.get("stop_sequences")
        answer = make_answer(
            model, [system, messages, tools], prompt_tokens, _length(request, self.settings.tokens),
            max_tokens=int(body["max_tokens"]),
            stop=stops if isinstance(stops, list) else None,
            reasoning=faults.reasoning or (isinstance(thinking, dict) and thinking.get("type") == "enabled"),
            tool_name=_tool_name(tools, body.get("tool_choice"), anthropic=True),
        )
        if faults.content_filter:
            answer.pieces, answer.finish = [], "content_filter"
        mid = "msg_" + self._next_id()
        if body.get("stream"):
            events = _anthropic_events(answer, mid)
            done = _sse("message_stop", {"type": "message_stop"})
            return await self._stream(request, events, done, faults)
        await self._delay_whole(faults, answer.completion_tokens)
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": "".join(answer.reasoning),
                            "signature": "sig-" + answer.tag})
        if answer.pieces:
            content.append({"type": "text", "text": answer.text})
        if answer.tool:
            content.append({"type": "tool_use", "id": "toolu_" + answer.tool.id[5:], "name": answer.tool.name,
                            "input": orjson.loads(answer.tool.arguments)})
        doc = {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": _ANTHROPIC_STOP[answer.finish], "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return web.Response(body=_padded(doc, faults), content_type="application/json")


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _bad_request(message: str, anthropic: bool) -> web.Response:
    if anthropic:
        return anthropic_error(400, "invalid_request_error", message)
    return openai_error(400, message, "invalid_request_error")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _length(request: web.Request, default: int) -> int:
    """Answer length: the `x-fake-tokens` header when given (benchmarks vary it per request), else the setting."""
    raw = request.headers.get("x-fake-tokens")
    if raw and raw.isdigit() and int(raw) > 0:
        return int(raw)
    return default


async def _forever() -> None:
    """Waits until the client goes away (aiohttp cancels the handler then) or the server stops."""
    await asyncio.Event().wait()


def _close(request: web.Request) -> None:
    """Drops the connection after flushing what was written: the chunked body never terminates."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _openai_usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": len(answer.reasoning), "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _openai_chunks(answer: Answer, cid: str, created: int, usage: dict[str, Any] | None) -> list[bytes]:
    """The SSE events of a streamed chat completion, exactly as OpenAI frames them (without [DONE])."""
    head = orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": answer.model, "system_fingerprint": FINGERPRINT})[:-1]
    pre = b"data: " + head + b',"choices":[{"index":0,"delta":'
    tail = (b',"usage":null' if usage is not None else b"") + b"}\n\n"
    mid = b',"logprobs":null,"finish_reason":null}]'

    def chunk(delta: dict[str, Any]) -> bytes:
        return pre + orjson.dumps(delta) + mid + tail

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out.extend(chunk({"reasoning_content": r}) for r in answer.reasoning)
    out.extend(chunk({"content": p}) for p in answer.pieces)
    if answer.tool:
        t = answer.tool
        out.append(chunk({"tool_calls": [{"index": 0, "id": t.id, "type": "function",
                                          "function": {"name": t.name, "arguments": ""}}]}))
        step = max(1, len(t.arguments) // 3)
        for i in range(0, len(t.arguments), step):
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": t.arguments[i:i + step]}}]}))
    out.append(pre + b'{},"logprobs":null,"finish_reason":' + orjson.dumps(answer.finish) + b"}]" + tail)
    if usage is not None:
        out.append(b"data: " + head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    return out


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _anthropic_events(answer: Answer, mid: str) -> list[bytes]:
    """The SSE events of a streamed Anthropic message, without the final message_stop."""
    start = {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": answer.model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}
    out = [_sse("message_start", start), _sse("ping", {"type": "ping"})]
    index = 0

    def block(kind: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": kind}))
        for d in deltas:
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1

    if answer.reasoning:
        block({"type": "thinking", "thinking": ""},
              [{"type": "thinking_delta", "thinking": r} for r in answer.reasoning]
              + [{"type": "signature_delta", "signature": "sig-" + answer.tag}])
    if answer.pieces:
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in answer.pieces])
    if answer.tool:
        t = answer.tool
        step = max(1, len(t.arguments) // 3)
        block({"type": "tool_use", "id": "toolu_" + t.id[5:], "name": t.name, "input": {}},
              [{"type": "input_json_delta", "partial_json": t.arguments[i:i + step]}
               for i in range(0, len(t.arguments), step)])
    out.append(_sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": _ANTHROPIC_STOP[answer.finish], "stop_sequence": None},
        "usage": {"output_tokens": answer.completion_tokens}}))
    return out


# ---------------------------------------------------------------------------------------------- process


async def run(settings: FakeLLMSettings) -> None:
    """Serves until SIGTERM/SIGINT; writes the ready file (if any) once listening."""
    fake = FakeLLM(settings)
    runner = web.AppRunner(fake.app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=settings.grace_s, keepalive_timeout=75.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    address = f"{settings.host}:{port}"
    write_ready_file(settings.ready_file, http=address)
    log.info("serving", extra={"address": address, "latency_ms": settings.latency_ms,
                               "per_token_ms": settings.per_token_ms, "tokens": settings.tokens,
                               "auth": bool(settings.api_keys)})
    try:
        await wait_for_stop_signal()
    finally:
        log.info("stopping")
        await runner.cleanup()


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="weir fake-llm", description="Simulated OpenAI/Anthropic-compatible provider.")
    p.add_argument("--host", help="interface to bind (WEIR_FAKE_LLM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port, 0 = a free one (WEIR_FAKE_LLM_PORT, default 8090)")
    p.add_argument("--latency-ms", type=float, help="time to first token (WEIR_FAKE_LLM_LATENCY_MS, default 0)")
    p.add_argument("--per-token-ms", type=float, help="delay per output token (WEIR_FAKE_LLM_PER_TOKEN_MS)")
    p.add_argument("--tokens", type=int, help="answer length in tokens (WEIR_FAKE_LLM_TOKENS, default 24)")
    p.add_argument("--api-key", help="require this bearer key; comma-separated for several (WEIR_FAKE_LLM_KEY)")
    p.add_argument("--models", help="model ids listed by /v1/models (WEIR_FAKE_LLM_MODELS)")
    p.add_argument("--log-level", help="log level (WEIR_LOG_LEVEL)")
    ns = p.parse_args(argv)
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "latency_ms", "per_token_ms", "tokens", "log_level"):
        if getattr(ns, name) is not None:
            overrides[name] = getattr(ns, name)
    if ns.api_key is not None:
        overrides["api_keys"] = tuple(k.strip() for k in ns.api_key.split(",") if k.strip())
    if ns.models is not None:
        overrides["models"] = tuple(m.strip() for m in ns.models.split(",") if m.strip())
    return overrides


def main(argv: list[str] | None = None) -> None:
    """`weir fake-llm [flags]`: runs the simulated provider in this process until SIGTERM/SIGINT."""
    settings = load_or_exit(FakeLLMSettings, "weir fake-llm", **parse_args(argv))
    setup_logging("fake-llm", settings.log_level)
    install_event_loop()
    asyncio.run(run(settings))
