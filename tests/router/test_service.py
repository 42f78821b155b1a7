"""The router as a real process: Route, ListModels, ReportOutcome and rich errors over gRPC."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.router.scorer import Scorer, load_scorer
from services.router.settings import SHIPPED_SCORER
from weir.common.v1 import types_pb2
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.errors import RemoteError, parse_rpc_error
from weir.mesh_config import FAKE_CONFIG
from weir.router.v1 import router_service_pb2 as pb
from weir.router.v1 import router_service_pb2_grpc as pb_grpc

StartService = Callable[..., supervisor.Process]
DIM = 384
# The fake model table, a free port (the router listens on 50053 by default) and the length prior instead
# of the shipped scorer (an empty WEIR_ROUTER_SCORER_PATH), so the decisions below are known by hand.
BASE_ENV = {"WEIR_CONFIG": str(FAKE_CONFIG), "WEIR_ROUTER_PORT": "0", "WEIR_ROUTER_SCORER_PATH": ""}


def embedding(v: np.ndarray, model_id: str = "minilm@test") -> types_pb2.Embedding:
    return types_pb2.Embedding(vector=v.astype("<f4").tobytes(), dim=v.shape[0], model_id=model_id)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
async def router(start_service: StartService) -> AsyncIterator[pb_grpc.RouterServiceAsyncStub]:
    proc = start_service("router", BASE_ENV)
    async with open_channel(proc.grpc) as channel:
        yield pb_grpc.RouterServiceStub(channel)


async def call_error(coro: object) -> RemoteError:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return parse_rpc_error(exc)
    raise AssertionError("the call succeeded")


async def test_list_models_puts_virtual_models_first(router: pb_grpc.RouterServiceAsyncStub) -> None:
    resp = await router.ListModels(pb.ListModelsRequest())
    assert [m.id for m in resp.models] == ["auto", "fake-small", "fake-large"]
    auto, small, large = resp.models
    assert auto.virtual and auto.tier == "virtual" and auto.provider == ""
    assert auto.context_window == 128_000
    assert not small.virtual and small.tier == "weak" and small.provider == "fake"
    assert (small.input_usd_per_mtok, small.output_usd_per_mtok, small.cached_input_usd_per_mtok) == (
        0.15, 0.60, 0.075)
    assert small.context_window == 16_384
    assert large.tier == "strong" and large.input_usd_per_mtok == 2.5 and large.context_window == 128_000


async def test_route_passthrough_and_auto(router: pb_grpc.RouterServiceAsyncStub) -> None:
    resp = await router.Route(pb.RouteRequest(requested_model="fake-small", prompt_tokens=10))
    assert [(t.model, t.provider) for t in resp.plan] == [("fake-small", "fake"), ("fake-large", "fake")]
    assert resp.tier == "weak"
    assert resp.reason == "fake-small requested; fallbacks: fake-large"

    short = await router.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=30,
                                               embedding=embedding(unit(1))))
    assert [t.model for t in short.plan] == ["fake-small", "fake-large"]
    assert short.tier == "weak"
    assert 0 < short.strong_probability < 0.5
    assert short.reason.startswith("auto: p(strong)=0.03 (length prior) < 0.50 -> fake-small (weak)")

    long = await router.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=9_000, max_tokens=500,
                                              embedding=embedding(unit(1))))
    assert [t.model for t in long.plan] == ["fake-large", "fake-small"]
    assert long.tier == "strong" and long.strong_probability > 0.5

    biased = await router.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=30, quality_bias=1.0))
    assert biased.tier == "strong"
    assert "(length prior: no embedding)" in biased.reason


async def test_report_outcome_cools_a_model_down(router: pb_grpc.RouterServiceAsyncStub) -> None:
    large = types_pb2.RouteTarget(model="fake-large", provider="fake")
    for _ in range(3):
        await router.ReportOutcome(pb.ReportOutcomeRequest(target=large, success=False, http_status=502,
                                                           latency_ms=20))
    resp = await router.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=9_000))
    assert [t.model for t in resp.plan] == ["fake-small", "fake-large"]
    assert resp.tier == "weak"
    # The cooldown is 5 s from the third failure; a slow machine may show a second less.
    assert re.search(r"fake-large in cooldown [45]s after 3 failures -> fake-small first", resp.reason)

    await router.ReportOutcome(pb.ReportOutcomeRequest(target=large, success=True, latency_ms=150))
    resp = await router.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=9_000))
    assert [t.model for t in resp.plan] == ["fake-large", "fake-small"]


async def test_errors_carry_reasons(router: pb_grpc.RouterServiceAsyncStub) -> None:
    err = await call_error(router.Route(pb.RouteRequest(requested_model="gpt-9")))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.reason == "MODEL_NOT_FOUND"
    assert err.metadata["known_models"] == "auto, fake-small, fake-large"

    err = await call_error(router.Route(pb.RouteRequest(requested_model="fake-large",
                                                        allowed_models=["fake-small"])))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "MODEL_NOT_ALLOWED"

    err = await call_error(router.Route(pb.RouteRequest(requested_model="auto", quality_bias=2.0,
                                                        prompt_tokens=-3)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_ARGUMENT"
    assert [f for f, _ in err.field_violations] == ["prompt_tokens", "quality_bias"]

    err = await call_error(router.Route(pb.RouteRequest(requested_model="fake-large", prompt_tokens=200_000)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "CONTEXT_WINDOW_EXCEEDED"

    err = await call_error(router.ReportOutcome(pb.ReportOutcomeRequest(
        target=types_pb2.RouteTarget(model="nope"), success=True)))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.reason == "MODEL_NOT_FOUND"


async def test_trained_scorer_artefact_is_used(start_service: StartService, tmp_path: Path) -> None:
    hard = unit(5)
    path = tmp_path / "scorer.npz"
    Scorer(hard * 12.0, [0.0, 0.0], -6.0, embedding_model_id="minilm@test", description="test").save(path)
    proc = start_service("router", {**BASE_ENV, "WEIR_ROUTER_SCORER_PATH": str(path)})
    async with open_channel(proc.grpc) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        near = await stub.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=20,
                                                embedding=embedding(hard)))
        assert near.tier == "strong" and near.strong_probability > 0.99
        assert "length prior" not in near.reason
        far = await stub.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=20,
                                               embedding=embedding(-hard)))
        assert far.tier == "weak"
        short_dim = await stub.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=20,
                                                     embedding=embedding(hard[:12])))
        assert "(length prior: embedding dim 12 != 384)" in short_dim.reason


def test_bad_scorer_path_stops_start_up(start_service: StartService, tmp_path: Path) -> None:
    with pytest.raises(supervisor.StartError, match="does not exist"):
        start_service("router", {**BASE_ENV,
                                 "WEIR_ROUTER_SCORER_PATH": str(tmp_path / "missing.npz")})
    with pytest.raises(supervisor.StartError, match="WEIR_ROUTER_QUALITY_BIAS"):
        start_service("router", {**BASE_ENV, "WEIR_ROUTER_QUALITY_BIAS": "3"})


async def test_the_shipped_scorer_is_the_default(start_service: StartService) -> None:
    model_id = load_scorer(SHIPPED_SCORER).embedding_model_id
    env = {k: v for k, v in BASE_ENV.items() if k != "WEIR_ROUTER_SCORER_PATH"}
    proc = start_service("router", env)
    async with open_channel(proc.grpc) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        resp = await stub.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=100,
                                                embedding=embedding(unit(2), model_id)))
        assert "(scorer mmlu-gain)" in resp.reason
        assert 0.0 <= resp.strong_probability <= 1.0
        other = await stub.Route(pb.RouteRequest(requested_model="auto", prompt_tokens=100,
                                                 embedding=embedding(unit(2), "minilm@test")))
        assert f"(length prior: embedding from minilm@test, scorer trained on {model_id})" in other.reason
