"""The bundled Milvus standalone server, run as a process of its own for the semantic tier.

    python -m services.cache.milvus_local --data DIR [--port 19530]

The PyPI package ``milvus`` ships a real Milvus standalone (2.3.x: HNSW and IVF indexes, partitions, an
embedded etcd and local storage) as compressed binaries. This module runs it the way Weir runs every
process: its binaries are unpacked once under DIR/bin, a config is written with free local ports (the
package's own launcher pins etcd to 2379/2380, which collide with a second instance or a real etcd; ours lie
outside the kernel's ephemeral range, and a start that still loses one to another process is made again on
new ones), the server is started as a child (which dies with this process), and once Milvus answers its health
check the ready file (WEIR_READY_FILE) gets ``{"grpc": "127.0.0.1:PORT", "uri": "http://127.0.0.1:PORT"}``.
SIGTERM stops Milvus (SIGKILL after a grace period: Milvus' own graceful stop waits for minutes).

`weir up` starts it when WEIR_MILVUS_URI is unset (see `start_milvus`); docs/cache.md says why.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import lzma
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from weir.kit import supervisor
from weir.kit.redis_local import free_ports_outside_ephemeral
from weir.kit.server import launcher_gone, write_ready_file

STOP_GRACE_S = 15.0
START_TIMEOUT_S = 180.0
START_ATTEMPTS = 3


def package_dir() -> Path | None:
    """Where the `milvus` package lies, or None when it is not installed."""
    spec = importlib.util.find_spec("milvus")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent
    return path if (path / "data" / "config.yaml.template").exists() else None


def available() -> bool:
    """Whether the bundled server can run here (the package is installed; its binaries are Linux x86-64)."""
    return package_dir() is not None and sys.platform == "linux" and platform.machine() in ("x86_64", "amd64")


def unpack_binaries(pkg: Path, bin_dir: Path) -> Path:
    """Decompresses the package's binaries into bin_dir (once: a checksum stamp skips unchanged files)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for packed in sorted((pkg / "data" / "bin").glob("*.lzma")):
        target = bin_dir / packed.name[: -len(".lzma")]
        stamp = target.with_name(target.name + ".md5")
        digest = hashlib.md5(packed.read_bytes()).hexdigest()
        if target.exists() and stamp.exists() and stamp.read_text().strip() == digest:
            continue
        tmp = target.with_name(target.name + ".tmp")
        with lzma.open(packed) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.chmod(0o755)
        tmp.replace(target)
        stamp.write_text(digest)
    return bin_dir / "milvus"


def render_config(template: str, data: Path, ports: dict[str, int]) -> str:
    """The package's config template with our ports and paths, every component advertising 127.0.0.1."""
    values = {
        "etcd_log_path": str(data / "logs" / "etcd.log"), "etcd_data_dir": str(data / "etcd"),
        "local_storage_dir": str(data / "storage"), "rocksmq_data_dir": str(data / "rocksmq"),
        "system_log_path": str(data / "logs"), "etcd_log_level": "warn",
        **{name: str(port) for name, port in ports.items()},
    }

    def substitute(m: re.Match[str]) -> str:
        key = m.group(1).split(":")[0].split("(")[0].strip()
        if key in values:
            return values[key]
        default = m.group(1).split(":", 1)[1].strip() if ":" in m.group(1) else ""
        return default

    text = re.sub(r"\{\{([^}]*)\}\}", substitute, template)
    text = re.sub(r"(?m)^(\s+)ip:\s*(#.*)?$", r"\1ip: 127.0.0.1", text)
    # The embedded etcd's own listen addresses, from a config file of ours (else 2379/2380, fixed).
    embed = "  use:\n    embed: true"
    return text.replace(embed, f"{embed}\n  config:\n    path: {data / 'etcd.yaml'}", 1)


def etcd_config(client_port: int, peer_port: int) -> str:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return (f"name: weir\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: weir={peer}\nauto-compaction-mode: revision\nauto-compaction-retention: '1000'\n")


def healthy(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1) as resp:
            return b"OK" in resp.read()
    except (urllib.error.URLError, OSError):
        return False


def run(data: Path, port: int) -> int:
    """Runs Milvus until SIGTERM; returns its exit status."""
    pkg = package_dir()
    if pkg is None:
        print("the `milvus` package is not installed (pip install milvus)", file=sys.stderr)
        return 2
    data = data.resolve()
    deadline = time.monotonic() + START_TIMEOUT_S
    for sub in ("logs", "etcd", "storage", "rocksmq", "configs", "run"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    exe = unpack_binaries(pkg, data / "bin")
    template = (pkg / "data" / "config.yaml.template").read_text()
    (data / "configs" / "glog.conf").write_text((pkg / "data" / "glog.conf").read_text())
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for attempt in range(1, START_ATTEMPTS + 1):
        child, ports, metrics_port, log_start = _start(exe, data, template, port)
        while child.poll() is None and not healthy(metrics_port) and time.monotonic() < deadline:
            if stopping or launcher_gone():
                break
            time.sleep(0.2)
        if child.poll() is None or attempt == START_ATTEMPTS or not _lost_a_port(data, log_start):
            break
        # Another process bound one of the chosen ports before Milvus did: choose new ones.
        print(f"milvus lost a port to another process before binding it; starting again ({attempt})",
              file=sys.stderr, flush=True)
        child.wait()
    if not healthy(metrics_port):  # stopped, launcher gone, Milvus exited or past the deadline
        return _stop(child, "did not become healthy")
    uri = f"http://127.0.0.1:{ports['proxy_port']}"
    write_ready_file(Path(os.environ["WEIR_READY_FILE"]) if os.environ.get("WEIR_READY_FILE") else None,
                     grpc=f"127.0.0.1:{ports['proxy_port']}", uri=uri, pid=child.pid)
    print(f"milvus standalone serving at {uri} (data {data}, pid {child.pid})", flush=True)
    while not stopping and child.poll() is None:
        if launcher_gone():  # like every service started by the supervisor, never outlive the launcher
            print("the launcher is gone: stopping", file=sys.stderr, flush=True)
            break
        time.sleep(0.2)
    return _stop(child, "exited" if child.poll() is not None else "")


def _start(exe: Path, data: Path, template: str, port: int
           ) -> tuple[subprocess.Popen[bytes], dict[str, int], int, int]:
    """Writes configs with fresh ports and starts Milvus; returns the child, its ports, its metrics port and
    where this start begins in logs/milvus.out. The ports lie outside the ephemeral range: Milvus binds them one
    component at a time, seconds later, while its own components open outgoing connections."""
    names = ("etcd_port", "proxy_internal_port", "root_coord_port", "query_coord_port", "query_node_port",
             "index_coord_port", "index_node_port", "data_coord_port", "data_node_port")
    *chosen, peer_port, metrics_port, proxy_port = free_ports_outside_ephemeral(len(names) + 3)
    ports = {"proxy_port": port or proxy_port, **dict(zip(names, chosen, strict=True))}
    (data / "configs" / "milvus.yaml").write_text(render_config(template, data, ports))
    (data / "etcd.yaml").write_text(etcd_config(ports["etcd_port"], peer_port))
    env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics_port),
           "MILVUS_RUN_DIR": str(data / "run"), "MILVUSCONF": str(data / "configs"),
           "LD_LIBRARY_PATH": f"{exe.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    env.pop("WEIR_READY_FILE", None)
    out = data / "logs" / "milvus.out"
    log_start = out.stat().st_size if out.exists() else 0
    with open(out, "ab") as log:  # the child keeps its own descriptor
        child = subprocess.Popen([str(exe), "run", "standalone"], cwd=data, env=env, stdout=log,
                                 stderr=subprocess.STDOUT,
                                 preexec_fn=supervisor.dies_with_this_thread(signal.SIGKILL))
    return child, ports, metrics_port, log_start


def _lost_a_port(data: Path, log_start: int) -> bool:
    """Whether the Milvus started at `log_start` of its log exited because a port was taken."""
    with open(data / "logs" / "milvus.out", "rb") as log:
        log.seek(log_start)
        return b"address already in use" in log.read()


def _stop(child: subprocess.Popen[bytes], why: str) -> int:
    if why:
        print(f"milvus {why} (see logs/milvus.out)", file=sys.stderr, flush=True)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if not why else 1


def start_milvus(data: Path, log_dir: Path | None = None, env: dict[str, str] | None = None,
                 name: str = "milvus", launch: supervisor.Launch | None = None) -> supervisor.Process:
    """Starts the bundled Milvus standalone as its own process; `.info["uri"]` is its URI."""
    return supervisor.start(name, supervisor.python_module("services.cache.milvus_local", "--data", str(data)),
                            env or {}, log_dir=log_dir, timeout=START_TIMEOUT_S + 10, launch=launch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data directory (binaries, config, storage)")
    parser.add_argument("--port", type=int, default=0, help="gRPC port of Milvus (0: a free one)")
    args = parser.parse_args()
    sys.exit(run(args.data, args.port))


if __name__ == "__main__":
    main()
