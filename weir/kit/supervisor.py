"""Starts Weir processes and waits until they serve; stops them cleanly. Used by `weir up` and the tests.

Each child gets WEIR_READY_FILE; it writes its bound addresses there once listening (see
`weir.kit.server.write_ready_file`), so ports can be 0 and nobody polls a port that is not open yet.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson


class StartError(RuntimeError):
    """A process exited or stayed silent before signalling readiness."""


class Aborted(StartError):
    """A start given up because its launch was aborted (a stop asked for while the mesh was starting)."""


@dataclass
class Process:
    """A started child process and what it reported when ready."""

    name: str
    popen: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    run_dir: Path | None = None  # holds the ready file (and the log when no log_dir was given)

    @property
    def grpc(self) -> str:
        return str(self.info.get("grpc", ""))

    @property
    def http(self) -> str:
        return str(self.info.get("http", ""))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.run_dir is not None and (self.log_path is None or self.run_dir not in self.log_path.parents):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Launch:
    """Processes started together, some in other threads (a mesh). Each is recorded the moment it is spawned,
    before it is ready, so `stop()` reaches the ones still starting too; `abort()` makes every start that is
    still waiting stop its process and raise `Aborted` (and every later start raise it at once)."""

    def __init__(self) -> None:
        self._spawned: list[Process] = []
        self._lock = threading.Lock()
        self._aborted = threading.Event()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self) -> None:
        """Safe from a signal handler: only sets a flag that the waiting starts poll."""
        self._aborted.set()

    def add(self, proc: Process) -> None:
        with self._lock:
            self._spawned.append(proc)

    def spawned(self) -> list[Process]:
        """Every process spawned so far, in spawn order (ready or not, alive or not)."""
        with self._lock:
            return list(self._spawned)

    def stop(self, ordered: Sequence[Process] = (), timeout: float = 10.0) -> None:
        """Aborts the starts still waiting, then stops the processes not in `ordered` (those still starting,
        or whose start failed elsewhere), then `ordered` in reverse."""
        self.abort()
        rest = [p for p in self.spawned() if all(p is not q for q in ordered)]
        stop_all([*ordered, *rest], timeout)


_PR_SET_PDEATHSIG = 1
#: Set by `start` to this process' pid: the child stops once its launcher is gone (`weir.kit.server.launcher_gone`).
PARENT_ENV = "WEIR_STOP_WITH_PARENT"


def process_running(pid: int) -> bool:
    """Whether `pid` is a live process (one that has exited but is not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def dies_with_this_thread(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for a child that is not a Weir service (redis-server, the Milvus binary), so cannot watch its
    launcher itself: Linux sends it `sig` when the thread that started it ends, i.e. when this process ends if
    that is the main thread. None from any other thread (the child would die with a worker thread) or off Linux."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None

    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))

    return preexec


def start(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 120.0,
    log_dir: Path | None = None,
    stdout: IO[bytes] | int | None = None,
    launch: Launch | None = None,
) -> Process:
    """Starts argv (e.g. [python, -m, services.cache]) and waits for its ready file. With `launch`, the process
    is recorded there as soon as it is spawned, and the wait gives up (stopping it) once the launch is aborted."""
    if launch is not None and launch.aborted:
        raise Aborted(f"start of {name} aborted")
    run_dir = Path(tempfile.mkdtemp(prefix=f"weir-{name}-"))
    ready = run_dir / "ready.json"
    child_env = {**os.environ, **(env or {}), "WEIR_READY_FILE": str(ready), PARENT_ENV: str(os.getpid())}
    log_path: Path | None = None
    out: Any = stdout
    if stdout is None:
        log_path = (log_dir or run_dir) / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    popen = subprocess.Popen(list(argv), env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Process(name=name, popen=popen, log_path=log_path, run_dir=run_dir)
    if launch is not None:
        launch.add(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launch is not None and launch.aborted:  # checked before readiness: see Launch.stop's snapshot
            proc.stop()
            raise Aborted(f"start of {name} aborted")
        if ready.exists():
            proc.info = orjson.loads(ready.read_bytes())
            return proc
        if popen.poll() is not None:
            message = f"{name} exited with {popen.returncode} before it was ready:\n{proc.log_tail()}"
            proc.stop()
            raise StartError(message)
        time.sleep(0.02)
    message = f"{name} was not ready within {timeout:.0f}s:\n{proc.log_tail()}"
    proc.stop()
    raise StartError(message)


def python_module(module: str, *args: str) -> list[str]:
    """argv running a module with this interpreter."""
    return [sys.executable, "-m", module, *args]


def stop_all(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """Stops processes in reverse start order."""
    for proc in reversed(processes):
        proc.stop(timeout)
