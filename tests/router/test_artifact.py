"""The shipped scorer artefact: the router's default, trained on the project's embedding model, and
better than random on prompts it never saw (embedded here with the real ONNX model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.embedder.engine import Engine
from services.router.health import HealthBook
from services.router.policy import Router
from services.router.scorer import GainScorer, Scorer, accepts_model, load_scorer
from services.router.settings import SHIPPED_SCORER, RouterSettings
from services.router.training.data import load_data
from services.router.training.metrics import routing_curve
from weir.kit.config import load
from weir.mesh_config import FAKE_CONFIG, load_mesh_config
from weir.model.manifest import read_manifest

HOLDOUT = Path(__file__).parent / "data" / "mmlu_holdout.jsonl"


@pytest.fixture(scope="module")
def shipped() -> GainScorer:
    scorer = load_scorer(SHIPPED_SCORER)
    assert isinstance(scorer, GainScorer)
    return scorer


def test_the_router_loads_the_shipped_artefact_by_default() -> None:
    assert load(RouterSettings, environ={}).scorer_path == SHIPPED_SCORER
    assert load(RouterSettings, environ={"WEIR_ROUTER_SCORER_PATH": ""}).scorer_path is None  # the prior
    assert SHIPPED_SCORER.stat().st_size < 1_000_000


def test_shipped_artefact_fits_the_embedder_model(shipped: GainScorer, model_dir: Path) -> None:
    assert shipped.dim == 384
    manifest = read_manifest(model_dir, verify_checksum=False)
    assert shipped.embedding_model_id == manifest.name  # any export of the model (name@checksum) is accepted
    assert accepts_model(shipped.embedding_model_id, manifest.model_id)
    # The export it was trained on is recorded; this machine's export may differ in bytes (another torch/onnx
    # build serialises the same graph differently), not in what it computes: the holdout test below embeds
    # with this machine's export and still needs the trained quality.
    assert json.loads(shipped.metadata)["embedding_export"].split("@")[0] == manifest.name
    meta = json.loads(shipped.metadata)
    assert meta["operating_point"]["threshold"] == 0.5
    assert 0.05 <= meta["operating_point"]["strong_share"] <= 0.95
    assert meta["cross_validation"]["apgr"] > 0.6
    rng = np.random.default_rng(0)
    for tokens in (0, 30, 300, 30_000):
        v = rng.normal(size=384).astype(np.float32)
        v /= np.linalg.norm(v)
        p = shipped.probability(v, tokens, 256)
        assert 0.0 <= p <= 1.0


def test_shipped_artefact_beats_random_on_held_out_prompts(shipped: GainScorer, model_dir: Path) -> None:
    data = load_data(HOLDOUT)
    vectors = Engine(model_dir).embed(data.prompts).vectors
    p = np.array([shipped.probability(v, int(t), 0) for v, t in zip(vectors, data.prompt_tokens, strict=True)])
    curve = routing_curve(p, data.strong, data.weak)
    assert curve.apgr > 0.6, f"APGR {curve.apgr:.3f} on the held-out rows (random: 0.5)"
    assert curve.cpt(0.5) < 0.4
    share = float(np.mean(p >= 0.5))
    expected = json.loads(shipped.metadata)["operating_point"]["strong_share"]
    assert abs(share - expected) < 0.1, f"threshold 0.5 sends {share:.0%}, the artefact says {expected:.0%}"


def test_the_router_names_the_scorer_and_the_bias_moves_the_share(shipped: GainScorer) -> None:
    prior = Scorer.prior(384)
    router = Router(load_mesh_config(FAKE_CONFIG), shipped, prior, HealthBook())
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def strong_share(bias: float) -> float:
        tiers = [router.route("auto", prompt_tokens=120, embedding=v.astype("<f4").tobytes(), embedding_dim=384,
                              embedding_model_id=shipped.embedding_model_id, quality_bias=bias).tier
                 for v in vectors]
        return tiers.count("strong") / len(tiers)

    shares = [strong_share(b) for b in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert shares == sorted(shares)
    d = router.route("auto", prompt_tokens=120, embedding=vectors[0].astype("<f4").tobytes(), embedding_dim=384,
                     embedding_model_id=shipped.embedding_model_id)
    assert "(scorer mmlu-gain)" in d.reason
    export = router.route("auto", prompt_tokens=120, embedding=vectors[0].astype("<f4").tobytes(), embedding_dim=384,
                          embedding_model_id=shipped.embedding_model_id + "@0123456789ab")
    assert "(scorer mmlu-gain)" in export.reason
    other = router.route("auto", prompt_tokens=120, embedding=vectors[0].astype("<f4").tobytes(),
                         embedding_dim=384, embedding_model_id="other-model@1")
    assert "(length prior: embedding from other-model@1" in other.reason
