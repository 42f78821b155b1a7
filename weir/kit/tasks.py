"""Background tasks of a service: periodic work and stopping a task cleanly (one way, everywhere)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("weir.kit.tasks")


def every(seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> asyncio.Task[None]:
    """Runs `work` every `seconds` (the first run one period from now) until the task is cancelled. A run that
    raises is logged and the next one still comes: periodic upkeep must outlive a failed call."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception as exc:
                log.warning("periodic task failed", extra={"task": name, "error": f"{type(exc).__name__}: {exc}"})

    return asyncio.get_running_loop().create_task(loop(), name=name)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancels `task` (if any) and waits until it has ended; its cancellation is expected, not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
