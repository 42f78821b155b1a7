"""The reasoner's Prometheus metrics (the kit's metrics port): tokens by model and team, attempts, gRPC calls."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc

from tests.conftest import StartService
from tests.reasoner.conftest import KEYS, complete, queue, request, write_config
from weir.reasoner.v1 import reasoner_service_pb2_grpc as pb_grpc


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_tokens_attempts_and_calls_are_counted(start_service: StartService, fake: str, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    cfg = write_config(tmp_path / "weir.toml", fake)
    proc = start_service("reasoner", {**KEYS, "WEIR_CONFIG": str(cfg), "WEIR_METRICS_PORT": "0",
                                      "WEIR_REASONER_BACKOFF_BASE_MS": "10"})
    await queue(http, "500", 1)
    async with grpc.aio.insecure_channel(proc.grpc) as ch:
        resp = await complete(pb_grpc.ReasonerServiceStub(ch), request("count my tokens"), "fake-tiny")
    async with aiohttp.ClientSession() as s, s.get(f"http://{proc.info['metrics']}/metrics") as r:
        text = await r.text()
    assert sample(text, "weir_reasoner_tokens_total", model="fake-tiny", team="t1", direction="in") == \
        resp.usage.prompt_tokens
    assert sample(text, "weir_reasoner_tokens_total", model="fake-tiny", team="t1", direction="out") == \
        resp.usage.completion_tokens
    assert sample(text, "weir_reasoner_attempts_total", model="fake-tiny", outcome="ok") == 1
    assert sample(text, "weir_reasoner_attempts_total", model="fake-tiny", outcome="server_error") == 1
    assert sample(text, "weir_reasoner_inflight_upstream", model="fake-tiny") == 0
    assert sample(text, "weir_grpc_server_seconds_count", method="/weir.reasoner.v1.ReasonerService/Complete",
                  code="OK") == 1
