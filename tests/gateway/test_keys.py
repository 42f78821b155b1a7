"""API keys: lifecycle through the admin API and the CLI, revocation on every replica, model restrictions,
admin-only endpoints, and keys never written to logs or traces."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import openai
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.gateway.conftest import NewKey, unique_question
from weir.common.v1 import types_pb2
from weir.devmesh import Mesh, add_gateway
from weir.gateway.v1 import gateway_service_pb2 as pb
from weir.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from weir.kit import supervisor
from weir.kit.errors import parse_rpc_error


def chat(base: str, key: str, model: str = "fake-small", **extra: object) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": unique_question(), "max_tokens": 30, **extra})


def test_key_lifecycle_create_use_rotate_revoke(mesh: Mesh, gateway2: supervisor.Process, admin: httpx.Client,
                                               new_key: NewKey) -> None:
    raw, view = new_key(name="ci", rpm=100)
    assert raw.startswith("wk-") and len(raw) > 40
    assert view["id"].startswith("key_") and view["hint"] == f"wk-…{raw[-4:]}"
    listed = admin.get("/v1/admin/keys", params={"team": view["team"]})
    assert [k["id"] for k in listed.json()["data"]] == [view["id"]]
    assert raw not in listed.text and "hash" not in listed.text, "the secret is shown once, never listed"
    r2 = f"http://{gateway2.http}"
    for base in (mesh.http, r2):
        assert chat(base, raw).status_code == 200
    got = admin.get(f"/v1/admin/keys/{view['id']}").json()
    assert got["team"] == view["team"] and got["rpm"] == 100 and "key" not in got

    rotated = admin.post(f"/v1/admin/keys/{view['id']}/rotate").json()
    new_raw = rotated["key"]
    assert new_raw != raw and rotated["id"] == view["id"] and rotated["hint"] == f"wk-…{new_raw[-4:]}"
    for base in (mesh.http, r2):
        old = chat(base, raw)
        assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_api_key"
        assert chat(base, new_raw).status_code == 200

    revoked = admin.post(f"/v1/admin/keys/{view['id']}/revoke").json()
    assert revoked["revoked"] and revoked["revoked_at"]
    for base in (mesh.http, r2):  # the very next request, on both replicas
        r = chat(base, new_raw)
        assert r.status_code == 401, r.text
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {new_raw}"}).status_code == 401
    assert admin.post(f"/v1/admin/keys/{view['id']}/rotate").status_code == 409
    assert admin.get("/v1/admin/keys/key_000000000000").status_code == 404


def test_rotation_with_grace_keeps_the_old_secret_until_revoked(mesh: Mesh, admin: httpx.Client,
                                                                new_key: NewKey) -> None:
    raw, view = new_key()
    new_raw = admin.post(f"/v1/admin/keys/{view['id']}/rotate", json={"grace_s": 600}).json()["key"]
    assert chat(mesh.http, raw).status_code == 200
    assert chat(mesh.http, new_raw).status_code == 200
    admin.post(f"/v1/admin/keys/{view['id']}/revoke")
    assert chat(mesh.http, raw).status_code == 401
    assert chat(mesh.http, new_raw).status_code == 401


async def test_revoked_key_is_refused_over_grpc(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key()
    md = (("authorization", f"Bearer {raw}"),)
    req = types_pb2.ChatRequest(model="fake-small", messages=[types_pb2.ChatMessage(role="user", content="hi")])

    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
            try:
                await pb_grpc.GatewayServiceStub(ch).CreateChatCompletion(
                    pb.CreateChatCompletionRequest(request=req), metadata=md)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert await call() == grpc.StatusCode.OK
    await asyncio.to_thread(admin.post, f"/v1/admin/keys/{view['id']}/revoke")
    assert await call() == grpc.StatusCode.UNAUTHENTICATED


async def test_model_restrictions(mesh: Mesh, new_key: NewKey) -> None:
    raw, _ = new_key(models=["fake-small"])
    client = openai.OpenAI(base_url=mesh.base_url, api_key=raw, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="fake-large", messages=unique_question())
    assert info.value.status_code == 403
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_allowed" and body["param"] == "model"
    assert "fake-small" in body["message"]
    ok = client.chat.completions.with_raw_response.create(model="fake-small", messages=unique_question())
    assert ok.headers["x-weir-model"] == "fake-small"
    # A virtual model is allowed when one of its members is, and routes only among the allowed ones.
    auto = client.chat.completions.with_raw_response.create(model="auto", messages=unique_question("x" * 9000))
    assert auto.headers["x-weir-model"] == "fake-small"
    assert [m.id for m in client.models.list()] == ["fake-small"]

    async def grpc_call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(mesh.procs["gateway"].grpc) as ch:
            req = types_pb2.ChatRequest(model="fake-large",
                                        messages=[types_pb2.ChatMessage(role="user", content="hi")])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.GatewayServiceStub(ch).CreateChatCompletion(
                    pb.CreateChatCompletionRequest(request=req), metadata=(("authorization", f"Bearer {raw}"),))
            assert parse_rpc_error(err.value).reason == "MODEL_NOT_ALLOWED"
            return err.value.code()

    assert await grpc_call() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_api_needs_an_admin_key_and_valid_input(mesh: Mesh, admin: httpx.Client, new_key: NewKey) -> None:
    raw, view = new_key()
    user = {"Authorization": f"Bearer {raw}"}
    for method, path in (("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
                         ("POST", f"/v1/admin/keys/{view['id']}/revoke"), ("PUT", "/v1/admin/teams/x")):
        r = httpx.request(method, f"{mesh.http}{path}", headers=user, json={"team": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", (path, r.text)
        assert httpx.request(method, f"{mesh.http}{path}", json={}).status_code == 401
    for body, param in (({"rpm": 5}, "team"), ({"team": "bad team!"}, "team"), ({"team": "a", "rpm": -1}, "rpm"),
                        ({"team": "a", "period": "year"}, "period"), ({"team": "a", "budget_usd": "lots"},
                                                                       "budget_usd"),
                        ({"team": "a", "colour": "red"}, "colour")):
        r = admin.post("/v1/admin/keys", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    # An admin key created by the master key may administer.
    admin_raw, _ = new_key(admin=True)
    r = httpx.get(f"{mesh.http}/v1/admin/keys", headers={"Authorization": f"Bearer {admin_raw}"})
    assert r.status_code == 200


def test_cli_manages_keys_and_teams(mesh: Mesh) -> None:
    env = {**os.environ, "WEIR_GATEWAY_URL": mesh.http, "WEIR_MASTER_KEY": mesh.master_key, "COLUMNS": "200"}
    team = "cli-" + uuid.uuid4().hex[:8]

    def weir(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weir.cli.main", *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=60)

    created = weir("keys", "create", "--team", team, "--rpm", "600", "--tpm", "100000", "--budget-usd", "50",
                   "--period", "month", "--models", "fake-small,auto")
    assert created.returncode == 0, created.stderr
    found = re.search(r"shown once, store it now\): (wk-\S+)", created.stdout)
    assert found, created.stdout
    raw = found.group(1)
    assert chat(mesh.http, raw).status_code == 200
    table = weir("keys", "list", "--team", team)
    assert table.returncode == 0 and team in table.stdout and raw not in table.stdout
    kid = re.search(r"key_[0-9a-f]{12}", table.stdout)
    assert kid, table.stdout
    updated = orjson.loads(weir("keys", "update", kid.group(0), "--rpm", "5", "--json").stdout)
    assert (updated["rpm"], updated["tpm"], updated["budget_usd"]) == (5, 100000, 50.0)
    assert updated["models"] == ["fake-small", "auto"] and updated["spend_usd"] > 0
    team_set = weir("teams", "set", team, "--budget-usd", "20", "--period", "day", "--json")
    assert team_set.returncode == 0 and orjson.loads(team_set.stdout)["budget_usd"] == 20.0
    rotated = orjson.loads(weir("keys", "rotate", kid.group(0), "--json").stdout)
    assert chat(mesh.http, rotated["key"]).status_code == 200 and chat(mesh.http, raw).status_code == 401
    assert weir("keys", "revoke", kid.group(0)).returncode == 0
    assert chat(mesh.http, rotated["key"]).status_code == 401
    missing = weir("keys", "get", "key_000000000000")
    assert missing.returncode == 1 and "404" in missing.stderr
    no_admin = weir("keys", "list", WEIR_MASTER_KEY="")
    assert no_admin.returncode == 1 and "--admin-key" in no_admin.stderr


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every exported request's bytes."""

    def __init__(self) -> None:
        self.exports: list[bytes] = []
        self.exported = asyncio.Event()

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports.append(request.SerializeToString())
        self.exported.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[_Collector, int]]:
    server = grpc.aio.server()
    c = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield c, port
    await server.stop(None)


@pytest.fixture
def traced_gateway(mesh: Mesh, collector: tuple[_Collector, int]) -> Iterator[supervisor.Process]:
    proc = add_gateway(mesh, "gateway-traced", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}",
                                                "OTEL_BSP_SCHEDULE_DELAY": "100", "WEIR_LOG_LEVEL": "debug"})
    yield proc
    proc.stop()
    mesh.procs.pop("gateway-traced", None)


async def test_keys_never_appear_in_logs_or_traces(mesh: Mesh, traced_gateway: supervisor.Process,
                                                   collector: tuple[_Collector, int], new_key: NewKey) -> None:
    keys = [new_key(rpm=1)[0], new_key(tpm=10)[0], new_key(models=["fake-large"])[0], new_key()[0]]
    revoked_raw, revoked = new_key()
    async with httpx.AsyncClient() as http:
        await http.post(f"{mesh.http}/v1/admin/keys/{revoked['id']}/revoke",
                        headers={"Authorization": f"Bearer {mesh.master_key}"})
        rotated = (await http.post(f"{mesh.http}/v1/admin/keys/{revoked['id']}/rotate",
                                   headers={"Authorization": f"Bearer {mesh.master_key}"}))
        assert rotated.status_code == 409
        statuses = set()
        for base in (mesh.http, f"http://{traced_gateway.http}"):
            for raw in [*keys, revoked_raw, "wk-never-issued-" + uuid.uuid4().hex]:
                for stream in (False, True):
                    r = await http.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {raw}"},
                                        json={"model": "fake-small", "messages": unique_question(), "stream": stream,
                                              "max_tokens": 30})
                    statuses.add(r.status_code)
                await http.get(f"{base}/v1/usage", headers={"Authorization": f"Bearer {raw}"})
    assert statuses >= {200, 400, 401, 403, 429}
    async with grpc.aio.insecure_channel(traced_gateway.grpc) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        for raw in keys:
            req = types_pb2.ChatRequest(model="fake-small", messages=[types_pb2.ChatMessage(role="user", content="hi")])
            try:
                await stub.CreateChatCompletion(pb.CreateChatCompletionRequest(request=req),
                                                metadata=(("authorization", f"Bearer {raw}"),))
            except grpc.aio.AioRpcError:
                pass
    await asyncio.wait_for(collector[0].exported.wait(), 10)
    await asyncio.sleep(0.5)  # later batches
    traces = b"".join(collector[0].exports)
    log_dir = mesh.log_dir
    assert log_dir is not None
    logs = await asyncio.to_thread(lambda: b"".join(p.read_bytes() for p in Path(log_dir).glob("*.log")))
    assert b'"service":"gateway"' in logs
    for raw in [*keys, revoked_raw, mesh.master_key]:
        assert raw.encode() not in logs, "a raw key was written to a log"
        assert raw.encode() not in traces, "a raw key was exported in a trace"
