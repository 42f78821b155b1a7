"""HTTP calls to one provider: a pooled keep-alive session, rotating keys, timeouts, SSE streaming."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

import aiohttp
import orjson

from services.reasoner import providers as p
from services.reasoner.sse import EventTooLarge, SSEParser
from weir.common.v1 import types_pb2
from weir.mesh_config import Model, Provider

log = logging.getLogger("weir.reasoner.upstream")

_ERROR_BODY_LIMIT = 64 * 1024


class KeyPool:
    """The provider's keys in round-robin order. A key that got a 429 for a model rests for its Retry-After
    (for that model only: providers limit each model separately)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = keys
        self._rest_until: dict[tuple[int, str], float] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._keys)

    def pick(self, model: str) -> str | None:
        """The next key not resting for `model`; None when the provider has no keys.

        Raises a rate_limited failure (retry_after = until the first key is back) when every key rests.
        """
        if not self._keys:
            return None
        now = time.monotonic()
        n = len(self._keys)
        for step in range(n):
            i = (self._next + step) % n
            if self._rest_until.get((i, model), 0.0) <= now:
                self._next = (i + 1) % n
                return self._keys[i]
        raise p.UpstreamFailure("rate_limited", 0, "every key of the provider is resting after a 429",
                                self.wait_s(model) or 0.0)

    def rest(self, key: str | None, model: str, seconds: float) -> None:
        if key is None or seconds <= 0:
            return
        now = time.monotonic()
        self._rest_until = {k: t for k, t in self._rest_until.items() if t > now}
        slot = (self._keys.index(key), model)
        self._rest_until[slot] = max(self._rest_until.get(slot, 0.0), now + seconds)

    def wait_s(self, model: str) -> float | None:
        """Seconds until some key may call `model` again (0: one may now); None when there are no keys."""
        if not self._keys:
            return None
        now = time.monotonic()
        return max(0.0, min(self._rest_until.get((i, model), 0.0) - now for i in range(len(self._keys))))


class Upstream:
    """One configured provider."""

    def __init__(self, provider: Provider, anthropic_max_tokens: int) -> None:
        self.provider = provider
        self.keys = KeyPool(provider.api_keys())
        self._anthropic_max_tokens = anthropic_max_tokens
        base = provider.base_url.rstrip("/")
        if provider.kind == "anthropic":
            self.url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        else:
            self.url = base + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        pr = self.provider
        connector = aiohttp.TCPConnector(limit=pr.max_connections, keepalive_timeout=60.0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=pr.total_timeout_s, sock_connect=pr.connect_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _request(self, chat: types_pb2.ChatRequest, model: Model,
                 stream: bool) -> tuple[bytes, dict[str, str], str | None]:
        key = self.keys.pick(model.upstream_model)
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if self.provider.kind == "anthropic":
            body = p.anthropic_body(chat, model.upstream_model, stream, self._anthropic_max_tokens)
            headers["anthropic-version"] = p.ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        else:
            body = p.openai_body(chat, model.upstream_model, stream)
            if key:
                headers["Authorization"] = "Bearer " + key
        return orjson.dumps(body), headers, key

    async def _failure(self, resp: aiohttp.ClientResponse, key: str | None, model: Model) -> p.UpstreamFailure:
        body = await resp.content.read(_ERROR_BODY_LIMIT)
        failure = p.classify_http_error(resp.status, body, p.parse_retry_after(resp.headers))
        if failure.kind == "rate_limited":
            self.keys.rest(key, model.upstream_model, failure.retry_after_s)
        return failure

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        return self._session

    async def complete(self, chat: types_pb2.ChatRequest, model: Model) -> p.Completion:
        """One non-streaming call. Raises UpstreamFailure."""
        data, headers, key = self._request(chat, model, stream=False)
        try:
            async with self.session.post(self.url, data=data, headers=headers) as resp:
                if resp.status != 200:
                    raise await self._failure(resp, key, model)
                body = await _read_bounded(resp)
        except aiohttp.ClientError as exc:
            raise p.UpstreamFailure("connection_error", 0, _describe(exc)) from None
        except TimeoutError:
            raise p.UpstreamFailure("timeout", 0, f"no answer within {self.provider.total_timeout_s:g}s") from None
        try:
            if self.provider.kind == "anthropic":
                return p.anthropic_completion(body)
            return p.openai_completion(body)
        except _SHAPE_ERRORS as exc:  # a shape the parser did not foresee: the provider's answer is unusable
            raise p.UpstreamFailure("bad_response", 200, f"unreadable response: {_describe(exc)}") from None

    async def stream(self, chat: types_pb2.ChatRequest, model: Model,
                     state: p.StreamState) -> AsyncGenerator[list[p.Piece], None]:
        """One streaming call: yields the pieces of each network read as they arrive, fills `state`.

        Timeouts: the first piece (text, reasoning or tool call) must arrive within the provider's
        first_token_timeout_s of sending the request (headers and empty role/ping events do not count:
        "timeout"); after it, a gap of that long without an event (pings excepted) is a stall; the whole call
        is bounded by total_timeout_s.

        Raises UpstreamFailure: HTTP errors and "timeout" before the first yield; stream_cut / stream_stalled /
        stream_malformed / stream_incomplete once streaming (the caller knows whether it passed anything on).
        Pieces that arrived before a broken event are yielded before the failure is raised.
        """
        data, headers, key = self._request(chat, model, stream=True)
        wait = self.provider.first_token_timeout_s
        anthropic = self.provider.kind == "anthropic"
        parser = SSEParser()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        first = True  # no piece yet
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self.session.post(self.url, data=data, headers=headers)
        except aiohttp.ClientError as exc:
            raise p.UpstreamFailure("connection_error", 0, _describe(exc)) from None
        except TimeoutError:
            raise p.UpstreamFailure("timeout", 0, f"no response headers within {wait:g}s") from None
        async with resp:
            if resp.status != 200:
                raise await self._failure(resp, key, model)
            while not state.ended:
                idle = asyncio.timeout_at(deadline)
                try:
                    async with idle:
                        chunk = await resp.content.readany()
                except TimeoutError:
                    if not idle.expired():
                        raise p.UpstreamFailure("stream_stalled", 200, "stream stalled: total timeout of "
                                                f"{self.provider.total_timeout_s:g}s") from None
                    if first:
                        raise p.UpstreamFailure("timeout", 200, f"no first token within {wait:g}s") from None
                    raise p.UpstreamFailure("stream_stalled", 200, f"stream stalled: no data for {wait:g}s") from None
                except aiohttp.ClientError as exc:
                    raise p.UpstreamFailure("stream_cut", 200, f"stream cut: {_describe(exc)}") from None
                if not chunk:
                    break
                pieces: list[p.Piece] = []
                broken: p.UpstreamFailure | None = None
                progress = False
                try:
                    events = parser.feed(chunk)
                except EventTooLarge as exc:
                    raise p.UpstreamFailure("stream_malformed", 200, str(exc)) from None
                for event, payload in events:
                    try:
                        if anthropic:
                            pieces.extend(p.anthropic_stream_event(state, event, payload))
                        elif payload:
                            pieces.extend(p.openai_stream_event(state, payload))
                    except p.UpstreamFailure as f:
                        broken = f
                        break
                    except _SHAPE_ERRORS as exc:
                        broken = p.UpstreamFailure("stream_malformed", 200,
                                                   f"unreadable stream event: {_describe(exc)}")
                        break
                    progress = progress or event != "ping"
                if pieces:
                    first = False
                if progress and not first:
                    deadline = loop.time() + wait
                if pieces:
                    yield pieces
                if broken is not None:
                    raise broken
            if state.ended:
                await _drain(resp, wait)
        if not state.complete:
            missing = "finish reason" if not state.finish_reason else (
                "message_stop" if anthropic else "[DONE]")
            kind = "stream_incomplete" if state.finish_reason and not parser.leftover() else "stream_cut"
            raise p.UpstreamFailure(kind, 200, f"stream ended without {missing}")


#: What a provider's parser raises on a JSON shape it did not foresee (the parsers read odd shapes as absent, so
#: this is the last line: the answer is reported as the provider's fault, never as the reasoner's).
_SHAPE_ERRORS = (TypeError, AttributeError, KeyError, ValueError)


#: The largest non-streamed answer read (a chat completion is a few KiB; a body past this is not one).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    """The response body, or a bad_response failure once it passes MAX_RESPONSE_BYTES (without reading it all)."""
    if (resp.content_length or 0) > MAX_RESPONSE_BYTES:
        raise p.UpstreamFailure("bad_response", 200, f"response of {resp.content_length} bytes is too large")
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.read(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise p.UpstreamFailure("bad_response", 200, f"response larger than {MAX_RESPONSE_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _drain(resp: aiohttp.ClientResponse, wait: float) -> None:
    """Reads the end of the HTTP body after the last event (usually already here): a response released
    before its body ended closes the connection instead of returning it to the keep-alive pool."""
    try:
        async with asyncio.timeout(wait):
            while await resp.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

