"""Integration: `weir up` as a user runs it, then the official openai client against it, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from weir.kit.redis_local import LocalRedis, free_ports_outside_ephemeral

pytestmark = pytest.mark.integration


def test_weir_up_serves_openai_clients_and_stops_cleanly(tmp_path: Path, redis_server: LocalRedis,
                                                        model_dir: Path) -> None:
    # Outside the ephemeral range: the bundled Milvus starts first, and its outgoing connections could take one.
    *chosen, http_port, fake_port = free_ports_outside_ephemeral(7)
    ports = dict(zip(("EMBEDDER", "CACHE", "ROUTER", "REASONER", "GATEWAY"), chosen, strict=True))
    env = {**os.environ, "WEIR_STATE_DIR": str(tmp_path / "state"), "WEIR_REDIS_URL": redis_server.url,
           "WEIR_GATEWAY_HTTP_PORT": str(http_port), "WEIR_FAKE_LLM_PORT": str(fake_port),
           "WEIR_REDIS_PREFIX": "weir-up-test:", "WEIR_CACHE_REDIS_PREFIX": "weir-up-test:", "COLUMNS": "200",
           **{f"WEIR_{n}_PORT": str(p) for n, p in ports.items()}}
    env.pop("WEIR_MASTER_KEY", None)
    env.pop("WEIR_CONFIG", None)
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "weir.cli.main", "up"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("mesh never became ready:\n" + (tmp_path / "up.log").read_text())
        time.sleep(0.3)  # let the banner flush
        banner = (tmp_path / "up.log").read_text()
        key = (tmp_path / "state" / "master.key").read_text().strip()
        assert key in banner, "the banner prints the generated key"
        assert "SIMULATED" in banner and "fake-llm" in banner
        for name in ("embedder", "cache", "router", "reasoner", "gateway", "redis"):
            assert name in banner

        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hello mesh"}])
        assert answer.choices[0].message.content
        chunks = list(client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Hello mesh"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            answer.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    assert "stopped." in (tmp_path / "up.log").read_text()
    for port in (*ports.values(), http_port, fake_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)


def processes_of(state: Path) -> dict[int, str]:
    """pid -> command line of every live process started for the mesh whose state directory is `state`."""
    marker = f"WEIR_STATE_DIR={state}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if cmdline and (entry / "stat").read_text().split(") ")[-1][0] != "Z":  # zombies are gone
                    found[int(entry.name)] = cmdline
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


def test_sigterm_during_start_up_stops_every_process_started_so_far(tmp_path: Path, redis_server: LocalRedis,
                                                                  model_dir: Path) -> None:
    """A stop asked for while the services are still starting (in `weir up`'s start-up threads) leaves nothing
    running: not the ones already up, not the ones still loading."""
    state = tmp_path / "state"
    *chosen, http_port, fake_port = free_ports_outside_ephemeral(7)
    ports = dict(zip(("EMBEDDER", "CACHE", "ROUTER", "REASONER", "GATEWAY"), chosen, strict=True))
    env = {**os.environ, "WEIR_STATE_DIR": str(state), "WEIR_REDIS_URL": redis_server.url,
           "WEIR_GATEWAY_HTTP_PORT": str(http_port), "WEIR_FAKE_LLM_PORT": str(fake_port),
           "WEIR_REDIS_PREFIX": "weir-up-test:", "WEIR_CACHE_REDIS_PREFIX": "weir-up-test:",
           **{f"WEIR_{n}_PORT": str(p) for n, p in ports.items()}}
    env.pop("WEIR_CONFIG", None)
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "weir.cli.main", "up"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the start-up pool has spawned the services
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            running = processes_of(state)
            if any("services.embedder" in c for c in running.values()):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the embedder was never spawned:\n" + (tmp_path / "up.log").read_text())
        assert not any("services.gateway" in c for c in running.values()), "still starting when stopped"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    left = processes_of(state)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of(state)
    for pid in left:  # leave nothing behind for the next test, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"
    text = (tmp_path / "up.log").read_text()
    assert code == 0, text
    assert "interrupted during start-up" in text and "stopped." in text
