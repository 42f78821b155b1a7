"""Dynamic micro-batching: concurrent requests share model runs.

Texts are queued with a future each. One dispatcher task takes up to `max_batch` of them per model
run whenever one of `workers` worker threads is free, so the event loop stays free. While the
workers are busy new texts pile up and form the next batch; a lone request with a free worker runs
at once. Only when several requests arrive together with a worker free does the dispatcher wait (at
most `max_wait_s` after the oldest one arrived) for the batch to fill.

On a CPU, two single-threaded runs side by side beat one run on two threads: the runs need no
barrier between threads, so a core taken by the event loop (or another process) delays one run
instead of stalling both threads of one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from services.embedder.engine import Embeddings
from weir.kit.errors import WeirError

log = logging.getLogger("weir.embedder.batcher")


@dataclass(frozen=True)
class Embedded:
    """One text's result: little-endian float32 vector bytes and what the tokenizer did."""

    vector: bytes
    token_count: int
    truncated: bool


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[Embedded]
    enqueued: float
    call: int


def _closed() -> WeirError:
    return WeirError(grpc.StatusCode.UNAVAILABLE, "the embedder is shutting down", reason="SHUTTING_DOWN")


def _fail_if_cancelled(batch: list[_Pending], task: asyncio.Task[None]) -> None:
    if task.cancelled():
        _fail_unfinished(batch)


def _fail_unfinished(batch: list[_Pending]) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(_closed())


class MicroBatcher:
    """Gathers texts from concurrent callers into model runs of at most `max_batch`, `workers` at a time."""

    def __init__(
        self, run: Callable[[Sequence[str], bool], Embeddings], max_batch: int, max_wait_s: float, workers: int = 1
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.workers = workers
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(workers)
        self._busy = 0  # workers running a batch
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weir-embed")
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._calls = 0
        #: Micro-batches run so far (one `run` call each) and texts they embedded.
        self.runs = 0
        self.texts_embedded = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="weir-embed-dispatch")

    async def close(self) -> None:
        """Stops dispatching; texts queued or in a run that is still going fail with UNAVAILABLE."""
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        _fail_unfinished(list(self._queue))
        self._queue.clear()
        # Let a run already inside ONNX Runtime finish before the session goes away.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    @property
    def queued(self) -> int:
        """Texts waiting for a model run."""
        return len(self._queue)

    def submit(self, texts: Sequence[str]) -> list[asyncio.Future[Embedded]]:
        """Queues texts; each future resolves to its `Embedded` (or the run's exception)."""
        if self._task is None or self._task.done():
            raise _closed()
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._calls += 1
        futures: list[asyncio.Future[Embedded]] = []
        for text in texts:
            fut: asyncio.Future[Embedded] = loop.create_future()
            self._queue.append(_Pending(text, fut, now, self._calls))
            futures.append(fut)
        self._wakeup.set()
        return futures

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a worker is free
            try:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                await self._fill(loop)
            except BaseException:
                self._slots.release()
                raise
            # Share the queue among the idle workers so every core gets work, up to max_batch each.
            idle = self.workers - self._busy
            size = min(self.max_batch, -(-len(self._queue) // idle))
            batch: list[_Pending] = []
            while self._queue and len(batch) < size:
                pending = self._queue.popleft()
                if not pending.future.done():  # skip callers that gave up
                    batch.append(pending)
            if not batch:
                self._slots.release()
                continue
            solo = self._busy == 0 and not self._queue  # nothing else to run: may use every core
            self._busy += 1
            task = loop.create_task(self._run_batch(loop, batch, solo))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            # A batch cancelled before its task ever ran (close() right after dispatch) never reaches
            # _run_batch's handler: fail its callers here so nobody waits forever.
            task.add_done_callback(functools.partial(_fail_if_cancelled, batch))

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], solo: bool) -> None:
        texts = [p.text for p in batch]
        try:
            result = await loop.run_in_executor(self._executor, self._run, texts, solo)
        except asyncio.CancelledError:
            _fail_unfinished(batch)
            raise
        except Exception as exc:  # handed to every caller of this batch
            log.exception("model run failed", extra={"texts": len(texts)})
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self._busy -= 1
            self._slots.release()
        self.runs += 1
        self.texts_embedded += len(texts)
        rows = result.vectors.astype("<f4", copy=False)
        for i, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result(Embedded(rows[i].tobytes(), result.token_counts[i], result.truncated[i]))

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Several calls but not a full batch on an idle model: let stragglers join, briefly."""
        # One call's texts sit together in the queue: same first and last call means a lone request.
        if self.max_wait_s <= 0 or self._queue[0].call == self._queue[-1].call:
            return
        deadline = self._queue[0].enqueued + self.max_wait_s
        while len(self._queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
