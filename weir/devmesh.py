"""A whole mesh for tests and benchmarks: fake-llm and the five services, each its own process on a free port."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from weir.kit import supervisor

MASTER_KEY = "wk-test-master-key-0123456789"


@dataclass
class Mesh:
    procs: dict[str, supervisor.Process] = field(default_factory=dict)
    master_key: str = MASTER_KEY
    gateway_env: dict[str, str] = field(default_factory=dict)  # how the gateway was started (for add_gateway)
    log_dir: Path | None = None
    launch: supervisor.Launch = field(default_factory=supervisor.Launch)  # every process spawned, ready or not

    @property
    def base_url(self) -> str:
        return f"http://{self.procs['gateway'].http}/v1"

    @property
    def http(self) -> str:
        return f"http://{self.procs['gateway'].http}"

    @property
    def fake_url(self) -> str:
        return f"http://{self.procs['fake-llm'].http}"

    def stop(self) -> None:
        """Stops every process, including any whose start failed or was still running in the start-up threads."""
        self.launch.stop(list(self.procs.values()))


def start_mesh(state: Path, redis_url: str, extra_env: dict[str, str] | None = None, workers: int = 1,
               milvus: str = "lite", gateways: int = 1) -> Mesh:
    """Starts fake-llm, embedder, cache, router, reasoner (in parallel), then the gateway and `workers` job
    workers (`python -m services.gateway.worker`, named "worker", "worker-2", ...). The semantic tier uses
    Milvus Lite in `state`, or with milvus="server" the bundled Milvus standalone (process "milvus").
    `gateways` > 1 starts that many gateway processes sharing the gateway's ports (SO_REUSEPORT), named
    "gateway", "gateway-2", ..."""
    mesh = Mesh()
    logs = state / "logs"
    env = {"WEIR_STATE_DIR": str(state), "WEIR_REDIS_URL": redis_url, "WEIR_MASTER_KEY": MASTER_KEY,
           "WEIR_CACHE_REDIS_PREFIX": "weir-test:", "WEIR_REASONER_BACKOFF_BASE_MS": "20",
           "WEIR_WEBHOOK_PRIVATE_NETWORKS": "true",  # the tests' webhook receivers listen on 127.0.0.1
           **(extra_env or {})}
    try:
        fake = supervisor.start("fake-llm", supervisor.python_module("weir.fakellm", "--port", "0"), env, log_dir=logs,
                                launch=mesh.launch)
        mesh.procs["fake-llm"] = fake
        env["WEIR_FAKE_LLM_URL"] = f"http://{fake.http}/v1"
        if milvus == "server":  # the bundled Milvus standalone, as `weir up` runs it (default: Milvus Lite)
            from services.cache.milvus_local import start_milvus

            mesh.procs["milvus"] = start_milvus(state / "milvus-server", log_dir=logs, launch=mesh.launch)
            env["WEIR_MILVUS_URI"] = mesh.procs["milvus"].info["uri"]
        names = ("embedder", "cache", "router", "reasoner")
        port0 = {f"WEIR_{n.upper()}_PORT": "0" for n in names}

        def start(name: str) -> supervisor.Process:
            service_env = {**env, **port0}
            if name == "cache":  # the cache asks the embedder's judge: it needs the embedder's address
                service_env["WEIR_EMBEDDER_ADDR"] = futures["embedder"].result().grpc
            return supervisor.start(name, supervisor.python_module(f"services.{name}"), service_env, log_dir=logs,
                                    launch=mesh.launch)

        with ThreadPoolExecutor(len(names)) as pool:
            futures: dict[str, Future[supervisor.Process]] = {}
            for n in names:
                futures[n] = pool.submit(start, n)
            for n, fut in futures.items():
                mesh.procs[n] = fut.result()
        addrs = {f"WEIR_{n.upper()}_ADDR": mesh.procs[n].grpc for n in names}
        mesh.gateway_env, mesh.log_dir = {**env, **addrs, "WEIR_GATEWAY_PORT": "0", "WEIR_GATEWAY_HTTP_PORT": "0"}, logs
        if gateways > 1:
            mesh.gateway_env["WEIR_REUSE_PORT"] = "1"
        mesh.procs["gateway"] = supervisor.start(
            "gateway", supervisor.python_module("services.gateway"), mesh.gateway_env, log_dir=logs, launch=mesh.launch)
        if gateways > 1:
            first = mesh.procs["gateway"]
            shared = {"WEIR_GATEWAY_PORT": first.grpc.rsplit(":", 1)[1],
                      "WEIR_GATEWAY_HTTP_PORT": first.http.rsplit(":", 1)[1]}
            for i in range(2, gateways + 1):
                add_gateway(mesh, f"gateway-{i}", shared)
        for i in range(workers):
            add_worker(mesh, "worker" if i == 0 else f"worker-{i + 1}")
    except BaseException:
        mesh.stop()
        raise
    return mesh


def add_gateway(mesh: Mesh, name: str, extra_env: dict[str, str] | None = None) -> supervisor.Process:
    """Another gateway replica on the same Redis and services (stopped with the mesh); see `Process.http`."""
    proc = supervisor.start(name, supervisor.python_module("services.gateway"),
                            {**mesh.gateway_env, **(extra_env or {})}, log_dir=mesh.log_dir, launch=mesh.launch)
    mesh.procs[name] = proc
    return proc


def add_worker(mesh: Mesh, name: str, extra_env: dict[str, str] | None = None) -> supervisor.Process:
    """Another job worker on the same Redis and services (stopped with the mesh)."""
    proc = supervisor.start(name, supervisor.python_module("services.gateway.worker"),
                            {**mesh.gateway_env, **(extra_env or {})}, log_dir=mesh.log_dir, launch=mesh.launch)
    mesh.procs[name] = proc
    return proc
