"""Shared by the reasoner tests: a fake-llm process, its model table, and small request/stream helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest

from weir.common.v1 import types_pb2
from weir.kit import supervisor
from weir.kit.errors import RemoteError, parse_rpc_error
from weir.reasoner.v1 import reasoner_service_pb2 as pb
from weir.reasoner.v1 import reasoner_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    Stub = pb_grpc.ReasonerServiceAsyncStub  # exists in the generated .pyi only
KEYS = {"T_REASONER_KEY_A": "key-a", "T_REASONER_KEY_B": "key-b"}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-llm on a free port, requiring one of the two test keys; yields its base URL."""
    proc = supervisor.start("fake-llm", supervisor.python_module("weir.fakellm", "--port", "0", "--tokens", "16"),
                            {"WEIR_FAKE_LLM_KEY": ",".join(KEYS.values())},
                            log_dir=tmp_path_factory.mktemp("fake-logs"))
    yield f"http://{proc.http}"
    proc.stop()


def write_config(path: Path, fake_url: str) -> Path:
    path.write_text(f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake_url}/v1"
api_key_env = ["T_REASONER_KEY_A", "T_REASONER_KEY_B"]
first_token_timeout_s = 1.0
total_timeout_s = 10.0
max_connections = 16

[[providers]]
name = "fake-anthropic"
kind = "anthropic"
base_url = "{fake_url}"
api_key_env = "T_REASONER_KEY_A"

[[models]]
id = "fake-small"
provider = "fake"
context_window = 16384

[[models]]
id = "fake-tiny"
provider = "fake"
context_window = 4096

[[models]]
id = "fake-large"
provider = "fake"
context_window = 128000

[[models]]
id = "claude"
provider = "fake-anthropic"
upstream_model = "claude-fake"
context_window = 200000
""")
    return path


@pytest.fixture
async def http(fake: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(fake) as session:
        await session.post("/_fake/reset")
        yield session


async def queue(http: aiohttp.ClientSession, fault: str, count: int = 1, model: str = "") -> None:
    async with http.post("/_fake/faults", json={"fault": fault, "count": count, "model": model}) as r:
        assert r.status == 200, await r.text()


async def stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get("/_fake/stats") as r:
        doc: dict[str, Any] = await r.json()
        return doc


def request(text: str = "What is a weir?", **sampling: Any) -> types_pb2.ChatRequest:
    return types_pb2.ChatRequest(
        model="auto",
        messages=[types_pb2.ChatMessage(role="system", content="Be brief."),
                  types_pb2.ChatMessage(role="user", content=text)],
        sampling=types_pb2.SamplingParams(**sampling),
    )


def plan(*models: str) -> list[types_pb2.RouteTarget]:
    return [types_pb2.RouteTarget(model=m) for m in models]


async def complete(stub: Stub, req: types_pb2.ChatRequest,
                   *models: str) -> pb.CompleteResponse:
    resp: pb.CompleteResponse = await stub.Complete(pb.CompleteRequest(request=req, plan=plan(*models),
                                                                       tenant="t1"), timeout=30)
    return resp


async def complete_error(stub: Stub, req: types_pb2.ChatRequest, *models: str) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        await complete(stub, req, *models)
    return parse_rpc_error(info.value)


async def stream(stub: Stub, req: types_pb2.ChatRequest,
                 *models: str) -> tuple[list[pb.StreamCompleteResponse], RemoteError | None]:
    """Every event of a StreamComplete call, and the error status it ended with (None when OK)."""
    events: list[pb.StreamCompleteResponse] = []
    call = stub.StreamComplete(pb.StreamCompleteRequest(request=req, plan=plan(*models)), timeout=30)
    try:
        async for event in call:
            events.append(event)
    except grpc.RpcError as exc:
        return events, parse_rpc_error(exc)
    return events, None


def text_of(events: list[pb.StreamCompleteResponse]) -> str:
    return "".join(e.delta.content for e in events if e.WhichOneof("event") == "delta")


def outcomes(attempts: Any) -> list[tuple[str, str, int]]:
    return [(a.target.model, a.outcome, a.http_status) for a in attempts]
