"""Coalescing: identical concurrent requests (same key) share one upstream call.

The call runs in its own task, not in any caller's: a caller that goes away (cancelled, deadline) only stops
waiting; the call is cancelled once the LAST caller has gone. Its result, or its error, goes to every caller.
A stream is pumped into a buffer that every subscriber reads from the start, so a caller that joins late
still gets every event. A key is free again once its call has finished (later callers start a new one).

Exactly one caller gets the result as it is; the others get `shared_copy(result)` (the reasoner marks those
answers as coalesced, so their usage is not counted twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Hashable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import grpc

from weir.kit.errors import WeirError

T = TypeVar("T")
E = TypeVar("E")


class _Flight(Generic[T]):
    __slots__ = ("claimed", "task", "waiters")

    def __init__(self, task: asyncio.Future[T]) -> None:
        self.task = task
        self.waiters = 0
        self.claimed = False


class UnaryFlights(Generic[T]):
    """Unary calls in the air, by key."""

    def __init__(self, shared_copy: Callable[[T], T]) -> None:
        self._shared_copy = shared_copy
        self._flights: dict[Hashable, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def _land(self, key: Hashable, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def run(self, key: Hashable, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the call for `key`: joins the one in the air, or starts `start()` when there is none."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.ensure_future(start()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._land(key, flight))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._land(key, flight)  # nobody waits any more: a new caller starts afresh
                flight.task.cancel()
        if flight.claimed:
            return self._shared_copy(result)
        flight.claimed = True
        return result


class _StreamFlight(Generic[E]):
    """One upstream stream pumped into a buffer that every subscriber replays from the start."""

    def __init__(self, source: AsyncGenerator[E, None]) -> None:
        self.events: list[E] = []
        self.error: BaseException | None = None
        self.finished = False
        self.subscribers = 0
        self.claimed = False
        self._wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._pump(source))

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _pump(self, source: AsyncGenerator[E, None]) -> None:
        try:
            async with aclosing(source):
                async for event in source:
                    self.events.append(event)
                    self._notify()
        except asyncio.CancelledError:
            self.error = WeirError(grpc.StatusCode.CANCELLED, "the shared upstream call was cancelled")
            raise
        except Exception as exc:  # the source's error (a WeirError, usually) goes to every subscriber
            self.error = exc
        finally:
            self.finished = True
            self._notify()

    async def follow(self) -> AsyncIterator[E]:
        i = 0
        while True:
            if i < len(self.events):
                i += 1
                yield self.events[i - 1]
                continue
            if self.finished:
                if self.error is not None:
                    raise self.error
                return
            await self._wake.wait()


class StreamFlights(Generic[E]):
    """Streams in the air, by key; `terminal(event)` says which event ends a successful stream."""

    def __init__(self, terminal: Callable[[E], bool], shared_copy: Callable[[E], E]) -> None:
        self._terminal = terminal
        self._shared_copy = shared_copy
        self._flights: dict[Hashable, _StreamFlight[E]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def _land(self, key: Hashable, flight: _StreamFlight[E]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def follow(self, key: Hashable, start: Callable[[], AsyncGenerator[E, None]]) -> AsyncGenerator[E, None]:
        """Every event of the stream for `key`, from its first: joins the one in the air or starts `start()`."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _StreamFlight(start())
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._land(key, flight))
        flight.subscribers += 1
        try:
            async for event in flight.follow():
                if self._terminal(event):
                    if flight.claimed:
                        event = self._shared_copy(event)
                    flight.claimed = True
                yield event
        finally:
            flight.subscribers -= 1
            if flight.subscribers == 0 and not flight.finished:
                self._land(key, flight)
                flight.task.cancel()
