"""weir.kit.tasks: periodic upkeep that outlives a failed run, and a clean stop."""

from __future__ import annotations

import asyncio

import pytest

from weir.kit import tasks


async def test_every_runs_periodically_and_survives_a_failing_run(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 2:
            raise RuntimeError("redis went away")

    task = tasks.every(0.01, work, "test upkeep")
    deadline = asyncio.get_running_loop().time() + 5
    while len(runs) < 4:
        assert asyncio.get_running_loop().time() < deadline, runs
        await asyncio.sleep(0.01)
    await tasks.stop(task)
    assert task.cancelled()
    after = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == after  # stopped: no run after stop() returned
    assert any(getattr(r, "task", "") == "test upkeep" and "RuntimeError: redis went away" in getattr(r, "error", "")
               for r in caplog.records)


async def test_stop_accepts_none_and_a_finished_task() -> None:
    await tasks.stop(None)

    async def nothing() -> None:
        return None

    task = asyncio.get_running_loop().create_task(nothing())
    await task
    await tasks.stop(task)
    assert task.done() and not task.cancelled()
