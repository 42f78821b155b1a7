"""Unary calls carried as messages on one long-lived gRPC stream (protos/weir/mux/v1/mux_service.proto).

A unary grpc.aio call has a fixed cost of ≈ 0.27–0.53 CPU-ms across both processes before any work; a message
on a stream that is already open costs half of that (`python -m bench.transport_bench`, docs/performance.md),
and one message can carry many calls. The gateway makes five calls per cache miss, so its hops (and the cache's
judge calls, the reasoner's outcome reports) go over a `MuxChannel` instead (WEIR_MUX=false: unary calls):

- **Batching.** Each side writes through one task that sends everything queued while its previous write was
  out as one message (`ExchangeRequest.calls`, `ExchangeResponse.results`): alone, a call costs one write
  each way; under load, one write carries many. Most of the saving at concurrency 16 comes from this.

- **Server.** `create_server()` registers a `MuxServicer` beside every service. It dispatches each
  `ExchangeRequest` to the same handler the unary call reaches, with the same error mapping (a `WeirError`
  becomes a `google.rpc.Status` with its details; anything else INTERNAL, logged), the same per-method metrics
  and, when tracing is on, the same server span (`/pkg.Service/Method`, continuing the caller's traceparent).
  Deadlines are enforced by cancelling the handler; a cancellation message cancels it too. On shutdown the
  servicer answers the calls it accepted, refuses new ones (UNAVAILABLE, reason MUX_DRAINING: the client
  sends them again on a new stream) and ends its streams, so a graceful stop does not wait out its grace.
- **Client.** `MuxChannel(target)` opens its own connection (no interceptors: one stream must not be one
  span) and one stream on it, lazily, again after the stream ends. Each call gets an id, a client span when
  tracing is on, a local deadline timer, and a cancellation message if the caller gives up. A failure raises
  `grpc.aio.AioRpcError` with the server's status details in its trailing metadata, so callers handle it
  exactly as a unary call's (`weir.kit.errors.parse_rpc_error`). No caller writes itself: one cancelled
  mid-write would cancel the whole stream (grpc.aio cancels a call whose write is). A server without
  MuxService (an older build during a rollout) answers the stream UNIMPLEMENTED; the channel then sends its
  calls as unary calls.
- `mux_stub(stub, service, mux)` returns `stub` with its unary methods on the stream and its streaming methods
  unchanged.

Load balancing is what it was: a channel to a Kubernetes Service holds one HTTP/2 connection to one pod, and
every unary call on it already went there; replicas are spread by connections, and so are streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from weir.kit import metrics, telemetry
from weir.kit.errors import WeirError, parse_rpc_error, parse_status, status_code, status_of
from weir.mux.v1 import mux_service_pb2 as pb
from weir.mux.v1 import mux_service_pb2_grpc as pb_grpc

log = logging.getLogger("weir.mux")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MuxService"].full_name
EXCHANGE = f"/{SERVICE_NAME}/Exchange"
DRAINING = "MUX_DRAINING"
_DEADLINE_EXCEEDED = status_pb2.Status(code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message="Deadline Exceeded")

#: Calls per message is how well calls share writes (1 when calls come one at a time).
_MESSAGES = metrics.counter("weir_mux_messages", "Messages received on multiplexed streams (weir.kit.mux)")
_CALLS = metrics.counter("weir_mux_calls", "Calls received on multiplexed streams, by the messages above")

T = TypeVar("T")
M = TypeVar("M")
Item = TypeVar("Item", pb.Call, pb.Result)


# ---- server -------------------------------------------------------------------------------------------------


class CallContext:
    """What a handler reached through the stream sees of grpc.aio's ServicerContext: its deadline."""

    __slots__ = ("_deadline",)

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())


class MuxServicer(pb_grpc.MuxServiceServicer):
    """Serves the unary methods registered on this server as messages of `Exchange` streams."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._streams: set[_ServerStream] = set()
        self.draining = False

    def add(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            if handler.unary_unary is not None:
                self._handlers[f"/{service}/{name}"] = handler

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(method)

    async def Exchange(self, request_iterator: AsyncIterator[pb.ExchangeRequest],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExchangeResponse]:
        if self.draining:
            return  # ends at once: the client's calls on it fail UNAVAILABLE (the server sent it away)
        stream = _ServerStream(self, request_iterator)
        self._streams.add(stream)
        try:
            # One generator, not one delegating to another: closed at its yield, it runs this finally at once.
            while results := await stream.out.take():
                for chunk in _chunks(results):
                    yield pb.ExchangeResponse(results=chunk)
        finally:
            self._streams.discard(stream)
            stream.cancel()

    async def drain(self, grace_s: float) -> None:
        """Refuses new calls, waits up to `grace_s` for the accepted ones to be answered, then ends every stream.
        Run beside `server.stop(grace_s)`, which sends clients away (GOAWAY) but would wait for open streams."""
        self.draining = True
        streams = list(self._streams)
        calls = [t for s in streams for t in s.calls.values()]
        if calls:
            await asyncio.wait(calls, timeout=grace_s)
        for s in list(self._streams):
            s.close()


class _Outbox(Generic[M]):
    """What waits for a stream's next write. A write takes all of it: calls (or results) that queued while the
    previous write was out share one message."""

    __slots__ = ("_items", "_ready", "closed")

    def __init__(self) -> None:
        self._items: list[M] = []
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, item: M) -> None:
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        """No more items: `take()` returns what is left, then an empty list."""
        self.closed = True
        self._ready.set()

    async def take(self) -> list[M]:
        while not self._items:
            if self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        items, self._items = self._items, []
        return items


#: A write carries calls (or results) up to this many bytes; a larger one goes alone (the channels take 64 MiB).
MESSAGE_BYTES = 4 * 1024 * 1024


def _chunks(items: list[Item]) -> Iterator[list[Item]]:
    """`items` in order, cut where a message would pass MESSAGE_BYTES."""
    chunk: list[Item] = []
    total = 0
    for item in items:
        size = item.ByteSize()
        if chunk and total + size > MESSAGE_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


class _ServerStream:
    def __init__(self, servicer: MuxServicer, requests: AsyncIterator[pb.ExchangeRequest]) -> None:
        self._servicer = servicer
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.out: _Outbox[pb.Result] = _Outbox()
        self._reader = asyncio.create_task(self._read(requests))

    def close(self) -> None:
        """Ends the stream once the results already queued are written."""
        self.out.close()

    def cancel(self) -> None:
        """The stream is over: stop reading and cancel the calls still open."""
        self._reader.cancel()
        for task in self.calls.values():
            task.cancel()

    async def _read(self, requests: AsyncIterator[pb.ExchangeRequest]) -> None:
        try:
            async for batch in requests:
                _MESSAGES.inc()
                _CALLS.inc(len(batch.calls))
                for req in batch.calls:
                    if req.cancel:
                        task = self.calls.pop(req.id, None)
                        if task is not None:
                            task.cancel()
                    elif self._servicer.draining:
                        self._answer(req.id, WeirError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down",
                                                       reason=DRAINING).to_status())
                    else:
                        self.calls[req.id] = asyncio.create_task(self._call(req))
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the stream broke: grpc cancels Exchange, which cancels the calls
        # The client wrote its last call: answer the open ones, then end the stream.
        if self.calls:
            await asyncio.wait(list(self.calls.values()))
        self.close()

    def _answer(self, call_id: int, status: status_pb2.Status | None = None, payload: bytes = b"") -> None:
        self.out.put(pb.Result(
            id=call_id, payload=payload, status=status.SerializeToString() if status is not None else b""))

    async def _call(self, req: pb.Call) -> None:
        since = time.perf_counter()
        method = req.method
        handler = self._servicer.handler(method)
        if handler is None:
            self._answer(req.id, status_pb2.Status(code=grpc.StatusCode.UNIMPLEMENTED.value[0],
                                                   message=f"method not found: {method}"))
            self.calls.pop(req.id, None)
            return
        timeout = req.timeout_us / 1e6 if req.timeout_us else None
        code = grpc.StatusCode.OK
        try:
            with _server_span(method, req.traceparent) as span:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        try:
                            request = handler.request_deserializer(req.payload)  # type: ignore[misc]
                        except DecodeError:
                            raise WeirError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the {method} request",
                                            reason="MALFORMED_REQUEST") from None
                        context = CallContext(None if timeout is None else time.monotonic() + timeout)
                        response = await handler.unary_unary(request, context)  # type: ignore[misc,arg-type]
                    self._answer(req.id, payload=handler.response_serializer(response))  # type: ignore[misc]
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED  # the caller gave up: nobody waits for an answer
                    raise
                except Exception as exc:
                    # A handler's own TimeoutError is a bug, as for a unary call; only the deadline is not.
                    expired = isinstance(exc, TimeoutError) and deadline.expired()
                    failed = _DEADLINE_EXCEEDED if expired else status_of(exc, method)
                    code = status_code(failed)
                    self._answer(req.id, failed)
                finally:
                    span.code(code)
        finally:
            metrics.observe_call(method, code.name, since)
            self.calls.pop(req.id, None)


# ---- client -------------------------------------------------------------------------------------------------


class MuxChannel:
    """Unary calls to one server as messages on one stream, opened on first use and again after it ends."""

    def __init__(self, target: str) -> None:
        from weir.kit.server import GRPC_OPTIONS  # the server module registers MuxServicer: import late

        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        self._exchange = self._channel.stream_stream(
            EXCHANGE, request_serializer=pb.ExchangeRequest.SerializeToString,
            response_deserializer=pb.ExchangeResponse.FromString)
        self._stream: _ClientStream | None = None
        self._ids = itertools.count(1)
        self._closed = False
        #: The server answered the stream UNIMPLEMENTED: it has no MuxService (calls go to the fallback).
        self.unsupported = False

    def _open(self) -> _ClientStream:
        if self._stream is None or self._stream.ended or self._stream.retired:
            if self._closed:
                raise _error(grpc.StatusCode.CANCELLED, "the channel is closed")
            self._stream = _ClientStream(self._exchange())
        return self._stream

    def unary(self, method: str, response_type: type[T],
              fallback: Callable[..., Awaitable[T]] | None = None) -> Callable[..., Awaitable[T]]:
        """A callable like a stub's unary method: `await f(request, timeout=...)`. `fallback` (the stub's own
        method) takes the calls while the server does not serve MuxService (an older version during a rollout)."""
        parse = cast(Callable[[bytes], T], response_type.FromString)  # type: ignore[attr-defined]

        async def call(request: Any, timeout: float | None = None, **kwargs: Any) -> T:  # noqa: ASYNC109
            if fallback is not None and self.unsupported:
                return await fallback(request, timeout=timeout, **kwargs)
            try:
                return parse(await self.call(method, request.SerializeToString(), timeout))
            except MuxUnsupported:
                if fallback is None:
                    raise
                return await fallback(request, timeout=timeout, **kwargs)

        return call

    async def call(self, method: str, payload: bytes, timeout_s: float | None = None) -> bytes:
        """Sends one call and returns the serialized response; raises grpc.aio.AioRpcError like a unary call."""
        with _client_span(method) as span:
            try:
                for attempt in (1, 2):
                    try:
                        return await self._open().call(next(self._ids), method, payload, timeout_s, span.traceparent)
                    except MuxUnsupported:
                        self.unsupported = True
                        raise
                    except _Refused:
                        # Refused unprocessed by a server that is shutting down: safe to send again, once.
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")  # pragma: no cover
            except grpc.aio.AioRpcError as exc:
                span.code(exc.code())
                raise

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.end()
        await self._channel.close()

    async def __aenter__(self) -> MuxChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _ClientStream:
    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call
        self._pending: dict[int, asyncio.Future[pb.Result]] = {}
        self._outbox: _Outbox[pb.Call] = _Outbox()
        self.ended = False
        #: Set when the server refused a call because it is shutting down: later calls open a new stream.
        self.retired = False
        self._end_error: grpc.aio.AioRpcError | None = None
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())

    async def call(self, call_id: int, method: str, payload: bytes, timeout_s: float | None,
                   traceparent: str) -> bytes:
        if self.ended:
            raise self._end_error or _error(grpc.StatusCode.UNAVAILABLE, "stream ended")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pb.Result] = loop.create_future()
        self._pending[call_id] = fut
        self._outbox.put(pb.Call(
            id=call_id, method=method, payload=payload, traceparent=traceparent,
            timeout_us=int(timeout_s * 1e6) if timeout_s is not None else 0))
        timer = loop.call_later(timeout_s, _expire, fut) if timeout_s is not None else None
        try:
            resp = await fut
        except asyncio.CancelledError:
            if not self.ended and call_id in self._pending:
                self._outbox.put(pb.Call(id=call_id, cancel=True))
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not self.ended:
                self._outbox.put(pb.Call(id=call_id, cancel=True))
            raise
        finally:
            self._pending.pop(call_id, None)
            if timer is not None:
                timer.cancel()
        if resp.status:
            failure = _status_error(resp.status)
            if isinstance(failure, _Refused):
                self.retired = True
            raise failure
        return resp.payload

    async def _write(self) -> None:
        try:
            while calls := await self._outbox.take():
                for chunk in _chunks(calls):
                    await self._call.write(pb.ExchangeRequest(calls=chunk))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream failed; the reader reports it to the waiting calls
            log.debug("mux stream write failed", extra={"error": str(exc)})

    async def _read(self) -> None:
        error: grpc.aio.AioRpcError | None = None
        try:
            async for batch in self._call:
                for result in batch.results:
                    fut = self._pending.pop(result.id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(result)
        except grpc.aio.AioRpcError as exc:
            error = exc
        except asyncio.CancelledError:
            error = _error(grpc.StatusCode.CANCELLED, "the channel is closed")
        finally:
            self.ended = True
            self._writer.cancel()
            # The calls were not answered because their carrier failed: UNAVAILABLE, as for a unary call that
            # lost its connection (a stream whose first write fails reports "Internal error from Core").
            if error is None:
                self._end_error = _error(grpc.StatusCode.UNAVAILABLE, "the server ended the stream")
            elif error.code() == grpc.StatusCode.CANCELLED:
                self._end_error = error
            elif error.code() == grpc.StatusCode.UNIMPLEMENTED:  # no call reached a handler: safe to resend
                self._end_error = MuxUnsupported(grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(),
                                                 grpc.aio.Metadata(), f"the server has no {SERVICE_NAME}")
            else:
                self._end_error = _error(grpc.StatusCode.UNAVAILABLE,
                                         f"the stream failed: {error.code().name}: {error.details()}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(self._end_error)
            self._pending.clear()

    def end(self) -> None:
        self._call.cancel()


class MuxUnsupported(grpc.aio.AioRpcError):
    """The server does not serve MuxService; the call was not processed."""


class _Refused(grpc.aio.AioRpcError):
    """The server refused the call unprocessed because it is shutting down (UNAVAILABLE, reason MUX_DRAINING)."""


def _expire(fut: asyncio.Future[pb.Result]) -> None:
    if not fut.done():
        fut.set_exception(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


def _error(code: grpc.StatusCode, details: str,
           trailing: tuple[tuple[str, str | bytes], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def _status_error(raw: bytes) -> grpc.aio.AioRpcError:
    code, message = parse_status(raw)
    failure = _error(code, message, (("grpc-status-details-bin", raw),))
    if code == grpc.StatusCode.UNAVAILABLE and parse_rpc_error(failure).reason == DRAINING:
        return _Refused(code, failure.initial_metadata(), failure.trailing_metadata(), message)
    return failure


def mux_stub(stub: T, service: ServiceDescriptor, mux: MuxChannel) -> T:
    """`stub` with its unary methods sent on `mux`; its streaming methods stay calls of their own."""
    out = _MuxStub()
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            setattr(out, method.name, getattr(stub, method.name))
        else:
            response = message_factory.GetMessageClass(method.output_type)
            setattr(out, method.name, mux.unary(f"/{service.full_name}/{method.name}", response,
                                                getattr(stub, method.name)))
    return cast(T, out)


class _MuxStub:
    """Attributes set by mux_stub, one per method of the service."""


# ---- spans (no-ops when tracing is off) ---------------------------------------------------------------------


class _Span:
    __slots__ = ("_span", "traceparent")

    def __init__(self, span: Any = None, traceparent: str = "") -> None:
        self._span = span
        self.traceparent = traceparent

    def code(self, code: grpc.StatusCode) -> None:
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self._span.set_status(Status(StatusCode.ERROR, code.name))


_NO_SPAN = _Span()


def _rpc_attributes(method: str) -> dict[str, Any]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


@contextlib.contextmanager
def _client_span(method: str) -> Iterator[_Span]:
    if not telemetry.enabled():
        yield _NO_SPAN
        return
    from opentelemetry import propagate, trace

    with trace.get_tracer("weir.mux").start_as_current_span(
            method, kind=trace.SpanKind.CLIENT, attributes=_rpc_attributes(method)) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield _Span(span, carrier.get("traceparent", ""))


@contextlib.contextmanager
def _server_span(method: str, traceparent: str) -> Iterator[_Span]:
    if not telemetry.enabled():
        yield _NO_SPAN
        return
    from opentelemetry import propagate, trace

    ctx = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with trace.get_tracer("weir.mux").start_as_current_span(
            method, context=ctx, kind=trace.SpanKind.SERVER, attributes=_rpc_attributes(method),
            record_exception=False, set_status_on_exception=False) as span:
        yield _Span(span)


__all__ = ["CallContext", "MuxChannel", "MuxServicer", "MuxUnsupported", "mux_stub"]
