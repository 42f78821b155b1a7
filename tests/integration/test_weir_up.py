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

from weir.kit.redis_local import LocalRedis, free_port

pytestmark = pytest.mark.integration


def test_weir_up_serves_openai_clients_and_stops_cleanly(tmp_path: Path, redis_server: LocalRedis,
                                                        model_dir: Path) -> None:
    ports = {name: free_port() for name in ("EMBEDDER", "CACHE", "ROUTER", "REASONER", "GATEWAY")}
    http_port, fake_port = free_port(), free_port()
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
