"""`weir up`: the whole mesh on embedded defaults, as separate processes, in the foreground."""

from __future__ import annotations

import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from weir.kit import supervisor
from weir.kit.config import default_model_dir, state_dir
from weir.kit.redis_local import LocalRedis, redis_answers, start_local_redis


@dataclass
class Ports:
    embedder: int = int(os.environ.get("WEIR_EMBEDDER_PORT", 50051))
    cache: int = int(os.environ.get("WEIR_CACHE_PORT", 50052))
    router: int = int(os.environ.get("WEIR_ROUTER_PORT", 50053))
    reasoner: int = int(os.environ.get("WEIR_REASONER_PORT", 50054))
    gateway: int = int(os.environ.get("WEIR_GATEWAY_PORT", 50055))
    http: int = int(os.environ.get("WEIR_GATEWAY_HTTP_PORT", 8080))
    fake_llm: int = int(os.environ.get("WEIR_FAKE_LLM_PORT", 8090))


def master_key(state: Path) -> tuple[str, str]:
    """WEIR_MASTER_KEY, or one generated once and kept in the state dir (mode 0600)."""
    if os.environ.get("WEIR_MASTER_KEY"):
        return os.environ["WEIR_MASTER_KEY"], "from WEIR_MASTER_KEY"
    path = state / "master.key"
    if path.exists():
        return path.read_text().strip(), f"from {path}"
    key = "wk-" + secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, f"generated, kept in {path}"


def grpc_health(address: str) -> str:
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    except grpc.RpcError as exc:
        return f"UNAVAILABLE ({exc.code().name.lower()})"


class Mesh:
    """The processes of one mesh, started in dependency order and stopped in reverse."""

    def __init__(self, state: Path, console: Console) -> None:
        self.state = state
        self.console = console
        self.procs: list[supervisor.Process] = []  # started and ready, in stop order reversed
        self.launch = supervisor.Launch()  # every process spawned, ready or still starting
        self.redis: LocalRedis | None = None
        self.logs = state / "logs"

    def start(self, name: str, module: str, env: dict[str, str], *args: str) -> supervisor.Process:
        proc = supervisor.start(name, supervisor.python_module(module, *args), env, log_dir=self.logs, timeout=180,
                                launch=self.launch)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stops everything started, including processes still starting in the start-up threads."""
        self.launch.stop(self.procs)
        if self.redis is not None:
            self.redis.stop()


def up(no_fake: bool = False) -> int:
    console = Console()
    state = state_dir().resolve()
    state.mkdir(parents=True, exist_ok=True)
    mesh = Mesh(state, console)
    ports = Ports()
    model_dir = Path(os.environ.get("WEIR_EMBEDDER_MODEL_DIR") or default_model_dir())
    if not (model_dir / "model.onnx").exists():
        console.print(f"[red]No exported embedding model at {model_dir}.[/] Run [bold]make model[/] (or `make up`).")
        return 2
    key, key_note = master_key(state)
    env: dict[str, str] = {"WEIR_STATE_DIR": str(state), "WEIR_MASTER_KEY": key,
                           # a developer's webhook receiver listens on this machine (deployments keep it off)
                           "WEIR_WEBHOOK_PRIVATE_NETWORKS": os.environ.get("WEIR_WEBHOOK_PRIVATE_NETWORKS", "true")}
    rows: list[tuple[str, str, str, str]] = []

    # Installed before anything starts: a Ctrl-C or SIGTERM during start-up aborts the starts still waiting
    # (in this thread and in the start-up pool), and the except below stops every process spawned so far.
    def on_signal(signum: int, frame: object) -> None:
        mesh.launch.abort()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_url = os.environ.get("WEIR_REDIS_URL", "")
        if redis_url:
            redis_note = "from WEIR_REDIS_URL"
        elif redis_answers("127.0.0.1", 6379):
            redis_url, redis_note = "redis://127.0.0.1:6379/0", "already running on 6379"
        else:
            mesh.redis = start_local_redis(state / "redis", persist=True)
            redis_url, redis_note = mesh.redis.url, f"started (pid {mesh.redis.popen.pid})"
        env["WEIR_REDIS_URL"] = redis_url
        rows.append(("redis", redis_url, redis_note, "SERVING"))

        simulated = not os.environ.get("WEIR_CONFIG") and not no_fake
        if simulated:
            fake = mesh.start("fake-llm", "weir.fakellm", env, "--port", str(ports.fake_llm))
            env["WEIR_FAKE_LLM_URL"] = f"http://{fake.http}/v1"
            rows.append(("fake-llm", f"http://{fake.http}/v1", f"pid {fake.popen.pid}", "SERVING"))

        addrs = {
            "embedder": f"127.0.0.1:{ports.embedder}", "cache": f"127.0.0.1:{ports.cache}",
            "router": f"127.0.0.1:{ports.router}", "reasoner": f"127.0.0.1:{ports.reasoner}",
        }
        env.update({f"WEIR_{n.upper()}_ADDR": a for n, a in addrs.items()})
        env.update({f"WEIR_{n.upper()}_PORT": a.rsplit(":", 1)[1] for n, a in addrs.items()})
        # The semantic tier: WEIR_MILVUS_URI, else the bundled Milvus standalone (docs/cache.md), else Milvus Lite.
        from services.cache import milvus_local

        local_milvus = not os.environ.get("WEIR_MILVUS_URI") and milvus_local.available() \
            and os.environ.get("WEIR_MILVUS_LOCAL", "server") != "lite"
        with console.status("starting embedder, cache, router, reasoner ..."), ThreadPoolExecutor(5) as pool:
            milvus_future = pool.submit(milvus_local.start_milvus, state / "milvus-server", mesh.logs,
                                        launch=mesh.launch) if local_milvus else None

            def start_service(name: str) -> supervisor.Process:
                service_env = env
                if name == "cache" and milvus_future is not None:  # the cache connects to Milvus at start
                    service_env = {**env, "WEIR_MILVUS_URI": milvus_future.result().info["uri"]}
                return supervisor.start(name, supervisor.python_module(f"services.{name}"), service_env,
                                        log_dir=mesh.logs, timeout=180, launch=mesh.launch)

            futures = {n: pool.submit(start_service, n) for n in addrs}
            errors = []
            if milvus_future is not None:
                try:
                    milvus = milvus_future.result()
                    mesh.procs.insert(0, milvus)  # stopped last
                    rows.append(("milvus", milvus.info["uri"], f"pid {milvus.popen.pid}", "SERVING"))
                except supervisor.StartError as exc:
                    errors.append(str(exc))
            else:
                where = "from WEIR_MILVUS_URI" if os.environ.get("WEIR_MILVUS_URI") else "Milvus Lite (in the cache)"
                rows.append(("milvus", where, "", "SERVING"))
            for fut in futures.values():
                try:
                    mesh.procs.append(fut.result())
                except supervisor.StartError as exc:
                    errors.append(str(exc))
            if errors:
                raise supervisor.StartError("\n\n".join(errors))
        gw_env = {**env, "WEIR_GATEWAY_PORT": str(ports.gateway), "WEIR_GATEWAY_HTTP_PORT": str(ports.http)}
        # The job worker first: the banner follows the gateway's readiness without waiting for it.
        worker = mesh.start("worker", "services.gateway.worker", gw_env)
        rows.append(("worker", "jobs queue (Redis Streams)", f"pid {worker.popen.pid}", "SERVING"))
        # WEIR_GATEWAY_PROCESSES > 1: that many gateway processes share its ports (SO_REUSEPORT), one per core.
        processes = int(os.environ.get("WEIR_GATEWAY_PROCESSES", "1") or 1)
        if processes > 1:
            gw_env["WEIR_REUSE_PORT"] = "1"
        gateway = mesh.start("gateway", "services.gateway", gw_env)
        for i in range(2, processes + 1):
            mesh.start(f"gateway-{i}", "services.gateway", gw_env)
        for proc in mesh.procs:
            if proc.name in addrs or proc.name.startswith("gateway"):
                rows.append((proc.name, proc.grpc + (f"  http://{proc.http}" if proc.http else ""),
                             f"pid {proc.popen.pid}", grpc_health(proc.grpc)))
    except (supervisor.StartError, OSError, RuntimeError) as exc:
        if mesh.launch.aborted:  # a signal during start-up: not a failure
            console.print("stopping (interrupted during start-up) ...")
            mesh.stop()
            console.print("stopped.")
            return 0
        console.print(f"[red]weir up failed:[/] {exc}")
        mesh.stop()
        return 1

    table = Table(title="Weir mesh", show_lines=False)
    for col in ("service", "address", "process", "health"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r, style=None if r[3] == "SERVING" else "red")
    console.print(table)
    base_url = f"http://{gateway.http}/v1"
    console.print(f"OpenAI base_url: [bold]{base_url}[/]   api_key: [bold]{key}[/] ({key_note})")
    if simulated:
        console.print("[yellow]No provider configured (WEIR_CONFIG unset): answering with the SIMULATED provider "
                      "`weir fake-llm`. Models: auto, fake-small, fake-large.[/]")
    console.print(f"Logs: {mesh.logs}/   Ctrl-C stops every process started here.")

    code = 0
    while not mesh.launch.aborted:  # set by on_signal
        dead = [p for p in mesh.procs if not p.alive()]
        if dead:
            for p in dead:
                console.print(f"[red]{p.name} exited with {p.popen.returncode}[/]\n{p.log_tail(20)}")
            code = 1
            break
        time.sleep(0.3)
    console.print("stopping ...")
    mesh.stop()
    console.print("stopped.")
    return code
