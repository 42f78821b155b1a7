"""The embedder tests' factory fixture: a real embedder process with setting overrides, and a stub on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import grpc
import pytest

from tests.conftest import StartService
from weir.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from weir.kit.clients import open_channel


class Connect(Protocol):
    """Starts an embedder with WEIR_EMBEDDER_<KEY>=value overrides and returns a stub to it."""

    async def __call__(self, **env: str) -> pb_grpc.EmbedderServiceAsyncStub: ...


@pytest.fixture
async def connect(start_service: StartService, model_dir: Path) -> AsyncIterator[Connect]:
    channels: list[grpc.aio.Channel] = []

    async def _connect(**env: str) -> pb_grpc.EmbedderServiceAsyncStub:
        full = {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir), "WEIR_EMBEDDER_PORT": "0"}
        full.update({f"WEIR_EMBEDDER_{k.upper()}": v for k, v in env.items()})
        proc = start_service("embedder", full)
        channel = open_channel(proc.grpc)
        channels.append(channel)
        return pb_grpc.EmbedderServiceStub(channel)

    yield _connect
    for channel in channels:
        await channel.close()


