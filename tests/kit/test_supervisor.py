"""The supervisor's Launch: processes started together are all stopped, the ones still starting included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import kill_launcher, wait_for
from weir.kit import supervisor
from weir.kit.redis_local import free_ports_outside_ephemeral

# A child that never writes its ready file: its start waits until the timeout or an abort.
NEVER_READY = [sys.executable, "-c", "import time; time.sleep(120)"]
# A child that is ready at once.
READY = [sys.executable, "-c",
         "import os, time; open(os.environ['WEIR_READY_FILE'], 'w').write('{}'); time.sleep(120)"]


def test_abort_stops_a_start_still_waiting_in_another_thread(tmp_path: Path) -> None:
    launch = supervisor.Launch()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(supervisor.start, "slow", NEVER_READY, log_dir=tmp_path, timeout=60, launch=launch)
        wait_for(lambda: len(launch.spawned()) == 1)
        child = launch.spawned()[0]
        assert child.alive()
        started = time.monotonic()
        launch.abort()
        with pytest.raises(supervisor.Aborted, match="start of slow aborted"):
            pending.result(timeout=10)
    assert time.monotonic() - started < 5, "the waiting start gives up at once, not at its timeout"
    assert not child.alive()


def test_stop_reaches_ready_processes_and_ones_still_starting(tmp_path: Path) -> None:
    launch = supervisor.Launch()
    ready = supervisor.start("ready", READY, log_dir=tmp_path, launch=launch)
    failures: list[BaseException] = []

    def start_slow() -> None:
        try:
            supervisor.start("slow", NEVER_READY, log_dir=tmp_path, timeout=60, launch=launch)
        except BaseException as exc:  # recorded for the assertion below
            failures.append(exc)

    thread = threading.Thread(target=start_slow)
    thread.start()
    wait_for(lambda: len(launch.spawned()) == 2)
    slow = launch.spawned()[1]

    launch.stop([ready])
    thread.join(10)
    assert not thread.is_alive()
    assert not ready.alive() and not slow.alive()
    assert len(failures) == 1 and isinstance(failures[0], supervisor.Aborted)
    with pytest.raises(supervisor.Aborted):  # a start after the stop does not spawn anything
        supervisor.start("late", READY, log_dir=tmp_path, launch=launch)
    assert len(launch.spawned()) == 2


def test_a_start_without_a_launch_is_unchanged(tmp_path: Path) -> None:
    proc = supervisor.start("ready", READY, log_dir=tmp_path)
    try:
        assert proc.alive() and proc.info == {}
    finally:
        proc.stop()
    with pytest.raises(supervisor.StartError, match="was not ready within"):
        supervisor.start("slow", NEVER_READY, log_dir=tmp_path, timeout=0.5)


def test_a_service_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """A launcher that dies without cleaning up (SIGKILL) leaves no service behind: each one started through the
    supervisor watches its launcher and stops gracefully once it is gone."""
    [child] = kill_launcher(
        "import time\n"
        "from pathlib import Path\n"
        "from weir.kit import supervisor\n"
        f"p = supervisor.start('fake-llm', supervisor.python_module('weir.fakellm', '--port', '0'), "
        f"log_dir=Path({str(tmp_path)!r}))\n"
        "print(p.popen.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    wait_for(lambda: not supervisor.process_running(child), timeout=15)
    assert "the launcher is gone: stopping" in (tmp_path / "fake-llm.log").read_text()


def _fake_llm(tmp_path: Path, launcher_pid: int) -> tuple[subprocess.Popen[bytes], Path]:
    """fake-llm started directly with WEIR_STOP_WITH_PARENT naming `launcher_pid` (not this process)."""
    log = tmp_path / "fake-llm.log"
    env = {**os.environ, supervisor.PARENT_ENV: str(launcher_pid), "WEIR_READY_FILE": str(tmp_path / "ready")}
    with log.open("wb") as out:
        proc = subprocess.Popen(supervisor.python_module("weir.fakellm", "--port", "0"), env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    return proc, log


def test_a_service_whose_launcher_died_before_it_loaded_stops(tmp_path: Path) -> None:
    """A launcher killed while the service was still importing: the service was reparented before it could
    compare its parent with the variable, and must still notice."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    proc, log = _fake_llm(tmp_path, gone.pid)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert "the launcher is gone: stopping" in log.read_text()


def test_a_variable_inherited_from_a_running_grandparent_is_ignored(tmp_path: Path) -> None:
    """WEIR_STOP_WITH_PARENT naming a live process that is not the parent (inherited through a process that did
    not start the service through the supervisor) does not stop the service."""
    other = subprocess.Popen(["sleep", "60"])
    proc, log = _fake_llm(tmp_path, other.pid)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), timeout=30)
        time.sleep(1.5)  # three polls of the launcher
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        other.kill()
        other.wait()
    assert "the launcher is gone" not in log.read_text()


def test_a_local_redis_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """redis-server cannot watch its launcher: the kernel stops it (PR_SET_PDEATHSIG) when the launcher dies."""
    [redis] = kill_launcher(
        "import time\n"
        "from pathlib import Path\n"
        "from weir.kit.redis_local import start_local_redis\n"
        f"r = start_local_redis(Path({str(tmp_path / 'redis')!r}))\n"
        "print(r.popen.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    wait_for(lambda: not supervisor.process_running(redis), timeout=10)


def test_a_child_started_off_the_main_thread_is_not_tied_to_that_thread() -> None:
    """PR_SET_PDEATHSIG fires when the starting *thread* ends: from a worker thread it would kill the child early."""
    assert supervisor.dies_with_this_thread() is not None
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(supervisor.dies_with_this_thread).result() is None


def test_ports_outside_the_ephemeral_range_are_free_distinct_and_not_ephemeral() -> None:
    low, _ = [int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()]
    ports = free_ports_outside_ephemeral(12)
    assert len(set(ports)) == 12 and all(1024 <= p < low for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
