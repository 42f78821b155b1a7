"""Shared fixtures: real servers in their own processes, on free ports, stopped after use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from weir.kit import supervisor
from weir.kit.config import default_model_dir
from weir.kit.redis_local import LocalRedis, start_local_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A private redis-server for this test session (never the machine's shared one)."""
    server = start_local_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    """URL of the private Redis, flushed after each test (it is ours alone)."""
    yield redis_server.url
    import redis

    redis.Redis.from_url(redis_server.url).flushall()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported embedding model (scripts/bootstrap.sh exports it before the tests run)."""
    path = Path(os.environ.get("WEIR_EMBEDDER_MODEL_DIR") or default_model_dir())
    if not (path / "model.onnx").exists():
        pytest.fail(f"no exported model at {path}: run `make model` (the test command does it first)")
    return path


StartService = Callable[..., supervisor.Process]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Factory: start_service("cache", {"WEIR_CACHE_...": ...}) runs `python -m services.cache` on port 0."""
    started: list[supervisor.Process] = []

    def start(name: str, env: Mapping[str, str] | None = None, module: str | None = None,
              args: tuple[str, ...] = ()) -> supervisor.Process:
        base = {"WEIR_STATE_DIR": str(tmp_path / "state"), "WEIR_LOG_LEVEL": "info",
                f"WEIR_{name.upper().replace('-', '_')}_PORT": "0"}
        proc = supervisor.start(
            name, supervisor.python_module(module or f"services.{name}", *args), {**base, **(env or {})},
            log_dir=tmp_path / "logs",
        )
        started.append(proc)
        return proc

    yield start
    supervisor.stop_all(started)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def kill_launcher(launcher_code: str) -> list[int]:
    """Runs `launcher_code` in a Python process of its own (from the repository root); the code starts something
    and prints the pids to watch on one line. Once they are printed and running, the launcher is SIGKILLed (no
    cleanup of its own runs); returns the pids."""
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
    try:
        assert launcher.stdout is not None
        pids = [int(p) for p in launcher.stdout.readline().split()]
        assert pids and all(supervisor.process_running(p) for p in pids)
    finally:
        launcher.kill()
        launcher.wait()
    return pids
