"""The pure routing policy: passthrough, virtual models, allowed models, health and context windows."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import grpc
import numpy as np
import pytest

from services.router.health import HealthBook, HealthPolicy
from services.router.policy import Decision, Router, effective_threshold
from services.router.scorer import Scorer
from services.router.usage import DeploymentUsage, Usage
from weir.kit.errors import WeirError
from weir.mesh_config import FAKE_CONFIG, MeshConfig, load_mesh_config, parse

DIM = 384


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_router(
    mesh: MeshConfig | None = None, *, scorer: Scorer | None = None, quality_bias: float = 0.0,
    clock: Clock | None = None,
) -> Router:
    prior = Scorer.prior(DIM, 1000)
    health = HealthBook(HealthPolicy(failure_threshold=3, cooldown_base_s=5.0, cooldown_max_s=60.0),
                        clock or Clock())
    return Router(mesh or load_mesh_config(FAKE_CONFIG), scorer or prior, prior, health, quality_bias)


def ids(decision: Decision) -> list[str]:
    return [m.id for m in decision.plan]


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def wide_mesh() -> MeshConfig:
    """Two weak and three strong models across two providers, and two virtual models."""

    def model(mid: str, tier: str, inp: float, out: float, ctx: int, provider: str = "p1") -> dict[str, object]:
        return {"id": mid, "provider": provider, "tier": tier, "input_usd_per_mtok": inp,
                "output_usd_per_mtok": out, "context_window": ctx}

    return parse({
        "providers": [{"name": "p1", "kind": "openai", "base_url": "http://a/v1"},
                      {"name": "p2", "kind": "anthropic", "base_url": "http://b"}],
        "models": [
            model("weak-a", "weak", 0.15, 0.60, 16_000),
            model("weak-b", "weak", 0.10, 0.40, 32_000),
            model("strong-a", "strong", 2.50, 10.0, 128_000),
            model("strong-b", "strong", 3.00, 15.0, 200_000, "p2"),
            model("strong-c", "strong", 1.00, 4.0, 8_000),
        ],
        "virtual_models": [
            {"id": "auto", "strong": "strong-a", "weak": "weak-a", "fallbacks": ["strong-b"]},
            {"id": "cautious", "strong": "strong-a", "weak": "weak-a", "threshold": 0.2},
        ],
    })


def remote(exc_info: pytest.ExceptionInfo[WeirError]) -> WeirError:
    return exc_info.value


# ---- passthrough ---------------------------------------------------------------------------------------


def test_concrete_model_is_passed_through_with_stronger_fallbacks() -> None:
    router = make_router()
    d = router.route("fake-small", prompt_tokens=50)
    assert ids(d) == ["fake-small", "fake-large"]
    assert [m.provider for m in d.plan] == ["fake", "fake"]
    assert d.tier == "weak"
    assert d.strong_probability == 0.0
    assert d.reason == "fake-small requested; fallbacks: fake-large"

    d = router.route("fake-large", prompt_tokens=50)
    assert ids(d) == ["fake-large"]  # no weaker model stands in for a strong one
    assert d.tier == "strong"
    assert d.reason == "fake-large requested; no fallbacks"


def test_passthrough_fallbacks_are_same_or_stronger_tier_cheapest_first() -> None:
    router = make_router(wide_mesh())
    assert ids(router.route("weak-a", prompt_tokens=100)) == ["weak-a", "weak-b", "strong-c", "strong-a",
                                                              "strong-b"]
    assert ids(router.route("strong-a", prompt_tokens=100)) == ["strong-a", "strong-c", "strong-b"]
    # strong-c's window (8000) cannot hold 10000 tokens, so it is skipped and the reason says so.
    d = router.route("strong-b", prompt_tokens=9_000, max_tokens=1_000)
    assert ids(d) == ["strong-b", "strong-a"]
    assert "context window < 10000 tokens: strong-c (8000)" in d.reason


# ---- allowed models and unknown models -----------------------------------------------------------------


def test_model_outside_allowed_models_is_refused() -> None:
    router = make_router()
    with pytest.raises(WeirError) as exc:
        router.route("fake-large", allowed_models=["fake-small"])
    err = remote(exc)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "MODEL_NOT_ALLOWED"
    assert err.metadata["model"] == "fake-large"
    assert err.metadata["allowed_models"] == "fake-small"


def test_allowed_models_restrict_fallbacks_and_virtual_members() -> None:
    router = make_router()
    assert ids(router.route("fake-small", allowed_models=["fake-small"])) == ["fake-small"]
    # Allowing a virtual model allows its members, directly too.
    assert ids(router.route("fake-large", allowed_models=["auto"])) == ["fake-large"]
    # A key limited to the weak model may still say "auto"; a long prompt then stays on the weak model.
    d = router.route("auto", prompt_tokens=8_000, allowed_models=["fake-small"])
    assert ids(d) == ["fake-small"]
    assert d.strong_probability > 0.5
    assert "not allowed for this key: fake-large -> fake-small first" in d.reason
    with pytest.raises(WeirError) as exc:
        make_router(wide_mesh()).route("auto", allowed_models=["weak-b"])
    assert remote(exc).reason == "MODEL_NOT_ALLOWED"


def test_unknown_model_is_not_found_with_the_known_ids() -> None:
    with pytest.raises(WeirError) as exc:
        make_router().route("gpt-5")
    err = remote(exc)
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.reason == "MODEL_NOT_FOUND"
    assert err.metadata["known_models"] == "auto, fake-small, fake-large"
    assert "auto, fake-small, fake-large" in err.message


# ---- virtual models ------------------------------------------------------------------------------------


def test_auto_with_the_prior_sends_short_prompts_to_weak_and_long_ones_to_strong() -> None:
    router = make_router()
    short = router.route("auto", prompt_tokens=40, embedding=unit(1).tobytes(), embedding_dim=DIM)
    assert ids(short) == ["fake-small", "fake-large"]
    assert short.tier == "weak"
    assert short.strong_probability == pytest.approx(41 / (41 + 1001))
    assert short.reason == ("auto: p(strong)=0.04 (length prior) < 0.50 -> fake-small (weak); "
                            "fallbacks: fake-large")

    long = router.route("auto", prompt_tokens=6_000, embedding=unit(1).tobytes(), embedding_dim=DIM)
    assert ids(long) == ["fake-large", "fake-small"]
    assert long.tier == "strong"
    assert long.strong_probability == pytest.approx(6001 / (6001 + 1001))
    assert long.reason.startswith("auto: p(strong)=0.86 (length prior) >= 0.50 -> fake-large (strong)")


def test_virtual_plan_puts_at_least_as_strong_models_first() -> None:
    router = make_router(wide_mesh())
    assert ids(router.route("auto", prompt_tokens=10)) == ["weak-a", "strong-a", "strong-b"]
    assert ids(router.route("auto", prompt_tokens=5_000)) == ["strong-a", "strong-b", "weak-a"]
    # The virtual model's own threshold is used: 0.2 sends 300-token prompts (p=0.23) to the strong model.
    assert router.route("auto", prompt_tokens=300).tier == "weak"
    assert router.route("cautious", prompt_tokens=300).tier == "strong"


def test_quality_bias_moves_the_threshold() -> None:
    assert effective_threshold(0.5, 0.0) == 0.5
    assert effective_threshold(0.5, 0.5) == pytest.approx(0.25)
    assert effective_threshold(0.5, -0.5) == pytest.approx(0.75)
    assert effective_threshold(0.5, 1.0) == 0.0
    assert effective_threshold(0.5, -1.0) == 1.0

    router = make_router()
    # 300 tokens: p(strong) = 0.23.
    assert router.route("auto", prompt_tokens=300).tier == "weak"
    d = router.route("auto", prompt_tokens=300, quality_bias=0.6)
    assert d.tier == "strong"
    assert ">= 0.20 (quality_bias +0.60)" in d.reason
    # The extremes pin the decision whatever the prompt.
    assert router.route("auto", prompt_tokens=0, quality_bias=1.0).tier == "strong"
    assert router.route("auto", prompt_tokens=15_000, quality_bias=-1.0).tier == "weak"


def test_request_bias_adds_to_the_global_default() -> None:
    cheap = make_router(quality_bias=-0.8)
    assert cheap.route("auto", prompt_tokens=3_000).tier == "weak"  # p=0.75 < threshold 0.9
    d = cheap.route("auto", prompt_tokens=3_000, quality_bias=0.8)  # back to 0
    assert d.tier == "strong"
    assert "quality_bias" not in d.reason
    assert make_router(quality_bias=0.5).route("auto", prompt_tokens=3_000, quality_bias=0.9).reason.count(
        "quality_bias +1.00") == 1


def test_a_trained_scorer_reads_the_embedding() -> None:
    hard = unit(3)
    scorer = Scorer(hard * 12.0, [0.0, 0.0], -6.0, embedding_model_id="minilm@1")
    router = make_router(scorer=scorer)
    near = router.route("auto", prompt_tokens=20, embedding=hard.tobytes(), embedding_dim=DIM,
                        embedding_model_id="minilm@1")
    assert near.tier == "strong"
    assert near.strong_probability == pytest.approx(1 / (1 + math.exp(-6.0)), rel=1e-4)
    assert "length prior" not in near.reason
    far = router.route("auto", prompt_tokens=20, embedding=(-hard).tobytes(), embedding_dim=DIM)
    assert far.tier == "weak"
    assert far.strong_probability < 1e-6


@pytest.mark.parametrize(
    ("vector", "dim", "model_id", "why"),
    [
        (b"", 0, "", "no embedding"),
        (np.ones(12, np.float32).tobytes(), 12, "minilm@1", "embedding dim 12 != 384"),
        (np.ones(10, np.float32).tobytes(), DIM, "minilm@1", "malformed embedding (40 bytes for dim 384)"),
        (unit(3).tobytes(), DIM, "other@2", "embedding from other@2, scorer trained on minilm@1"),
        (np.full(DIM, np.nan, np.float32).tobytes(), DIM, "minilm@1", "embedding has non-finite values"),
    ],
)
def test_unusable_embedding_falls_back_to_the_prior_and_says_why(
    vector: bytes, dim: int, model_id: str, why: str
) -> None:
    scorer = Scorer(unit(3) * 12.0, [0.0, 0.0], 6.0, embedding_model_id="minilm@1")  # would say "strong"
    d = make_router(scorer=scorer).route(
        "auto", prompt_tokens=100, embedding=vector, embedding_dim=dim, embedding_model_id=model_id
    )
    assert d.strong_probability == pytest.approx(101 / (101 + 1001))
    assert d.tier == "weak"
    assert f"(length prior: {why})" in d.reason


# ---- health --------------------------------------------------------------------------------------------


def fail(router: Router, model: str, times: int, retry_after_s: float = 0.0) -> None:
    for _ in range(times):
        router.report(model, "fake", success=False, http_status=503, retry_after_s=retry_after_s)


def test_cooldown_moves_a_model_to_the_back_and_expires() -> None:
    clock = Clock()
    router = make_router(clock=clock)
    fail(router, "fake-large", 2)
    assert ids(router.route("auto", prompt_tokens=5_000)) == ["fake-large", "fake-small"]  # below threshold
    fail(router, "fake-large", 1)
    d = router.route("auto", prompt_tokens=5_000)
    assert ids(d) == ["fake-small", "fake-large"]  # never dropped
    assert d.tier == "weak"
    assert d.strong_probability > 0.5
    assert "fake-large in cooldown 5s after 3 failures -> fake-small first" in d.reason
    clock.t += 5.1
    assert ids(router.route("auto", prompt_tokens=5_000)) == ["fake-large", "fake-small"]

    # Each further failure doubles the cooldown, up to the maximum.
    fail(router, "fake-large", 1)
    assert router.health.cooldown_remaining("fake-large", clock.t) == pytest.approx(10.0)
    fail(router, "fake-large", 10)
    assert router.health.cooldown_remaining("fake-large", clock.t) == pytest.approx(60.0)
    # One success clears it.
    router.report("fake-large", "fake", success=True, latency_ms=100)
    assert router.health.cooldown_remaining("fake-large", clock.t) == 0.0
    assert ids(router.route("auto", prompt_tokens=5_000))[0] == "fake-large"


def test_retry_after_is_honoured_from_the_first_failure() -> None:
    clock = Clock()
    router = make_router(clock=clock)
    router.report("fake-small", "fake", success=False, http_status=429, retry_after_s=30)
    d = router.route("fake-small")
    assert ids(d) == ["fake-large", "fake-small"]
    assert d.tier == "strong"
    assert "fake-small in cooldown 30s after 1 failure (retry-after 30s) -> fake-large first" in d.reason
    clock.t += 31
    assert ids(router.route("fake-small")) == ["fake-small", "fake-large"]


def test_request_faults_do_not_count_against_a_model() -> None:
    router = make_router()
    for _ in range(5):
        router.report("fake-large", "fake", success=False, http_status=400)
    rec = router.health.get("fake-large")
    assert rec is not None and rec.consecutive_failures == 0
    assert ids(router.route("fake-large")) == ["fake-large"]


def test_all_models_cooling_keeps_the_plan_soonest_available_first() -> None:
    router = make_router()
    fail(router, "fake-small", 1, retry_after_s=50)
    fail(router, "fake-large", 1, retry_after_s=20)
    d = router.route("fake-small")
    assert ids(d) == ["fake-large", "fake-small"]
    assert "fake-large in cooldown 20s" in d.reason and "fake-small in cooldown 50s" in d.reason


def test_latency_is_an_ewma_and_breaks_price_ties() -> None:
    mesh = parse({
        "providers": [{"name": "p", "kind": "openai", "base_url": "http://a/v1"}],
        "models": [{"id": m, "provider": "p", "tier": "weak", "input_usd_per_mtok": 1.0}
                   for m in ("a", "b", "c")],
    })
    router = make_router(mesh)
    assert ids(router.route("a", prompt_tokens=10)) == ["a", "b", "c"]
    router.report("b", "p", success=True, latency_ms=900)
    router.report("c", "p", success=True, latency_ms=100)
    router.report("c", "p", success=True, latency_ms=1100)  # 0.2 * 1100 + 0.8 * 100 = 300
    assert router.health.latency_ms("c") == pytest.approx(300.0)
    assert ids(router.route("a", prompt_tokens=10)) == ["a", "c", "b"]


def test_report_validates_its_input() -> None:
    router = make_router()
    with pytest.raises(WeirError) as exc:
        router.report("nope", "fake", success=True)
    assert remote(exc).reason == "MODEL_NOT_FOUND"
    with pytest.raises(WeirError) as exc:
        router.report("auto", "", success=True)
    assert remote(exc).field_violations == (("target.model", "must be a concrete model id"),)
    with pytest.raises(WeirError) as exc:
        router.report("fake-small", "openai", success=True)
    assert remote(exc).field_violations == (("target.provider", "must be 'fake' or empty"),)
    with pytest.raises(WeirError) as exc:
        router.report("fake-small", "", success=False, latency_ms=-1, retry_after_s=math.inf)
    assert [f for f, _ in remote(exc).field_violations] == ["latency_ms", "retry_after_s"]


# ---- context windows and input errors ------------------------------------------------------------------


def test_models_with_too_small_a_context_window_are_skipped() -> None:
    router = make_router()
    d = router.route("fake-small", prompt_tokens=15_000, max_tokens=2_000)
    assert ids(d) == ["fake-large"]
    assert d.tier == "strong"
    assert d.reason == ("fake-small requested; context window < 17000 tokens: fake-small (16384) "
                        "-> fake-large first; no fallbacks")
    # A weak decision forced by the bias still cannot use a window that is too small.
    assert ids(router.route("auto", prompt_tokens=17_000, quality_bias=-1.0)) == ["fake-large"]
    # Exactly the window fits.
    assert ids(router.route("fake-small", prompt_tokens=16_000, max_tokens=384))[0] == "fake-small"


def test_nothing_fits_is_an_invalid_argument() -> None:
    with pytest.raises(WeirError) as exc:
        make_router().route("auto", prompt_tokens=120_000, max_tokens=10_000)
    err = remote(exc)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "CONTEXT_WINDOW_EXCEEDED"
    assert err.metadata == {"model": "auto", "needed_tokens": "130000", "context_window": "128000"}


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"quality_bias": 1.5}, ["quality_bias"]),
        ({"quality_bias": math.nan}, ["quality_bias"]),
        ({"prompt_tokens": -1, "max_tokens": -5}, ["prompt_tokens", "max_tokens"]),
        ({"model": ""}, ["requested_model"]),
    ],
)
def test_bad_input_is_invalid_argument_with_field_violations(
    kwargs: dict[str, float], fields: Sequence[str]
) -> None:
    model = str(kwargs.pop("model", "auto"))
    with pytest.raises(WeirError) as exc:
        make_router().route(model, **kwargs)  # type: ignore[arg-type]
    err = remote(exc)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.field_violations] == list(fields)


def limited_mesh() -> MeshConfig:
    """wide_mesh with per-deployment limits on strong-a (tpm) and strong-b (rpm)."""
    doc = wide_mesh()
    models = {m.id: m for m in doc.models.values()}
    from dataclasses import replace

    models["strong-a"] = replace(models["strong-a"], tpm=10_000)
    models["strong-b"] = replace(models["strong-b"], rpm=100)
    return replace(doc, models=models)


def test_a_deployment_near_its_rate_limit_moves_behind_those_with_room() -> None:
    mesh = limited_mesh()
    usage = DeploymentUsage(mesh, None, "weir:")
    router = make_router(mesh)
    router.usage, router.full_share = usage, 0.9
    assert ids(router.route("strong-a"))[0] == "strong-a"  # nothing known: nothing moves
    usage.view = {"strong-a": Usage(requests=12, tokens=9_500, rpm=0, tpm=10_000),
                  "strong-b": Usage(requests=40, tokens=80_000, rpm=100, tpm=0)}
    d = router.route("strong-a")
    assert ids(d)[0] != "strong-a" and ids(d)[-1] == "strong-a"
    assert "strong-a at 95% of its 10,000 TPM used -> " in d.reason
    usage.view["strong-b"] = Usage(requests=99, tokens=0, rpm=100, tpm=0)
    d = router.route("strong-a")
    assert ids(d)[-2:] == ["strong-a", "strong-b"]  # both full: behind the others, in plan order, never dropped
    assert "strong-b at 99% of its 100 RPM used" in d.reason


async def test_deployment_usage_reads_the_gateways_windows(redis_url: str) -> None:
    """The windows the gateway's scripts write (services/gateway/lua.py), read by one script."""
    import time

    import redis.asyncio as aioredis

    mesh = limited_mesh()
    r = aioredis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    prefix = f"usage-test-{now}:"
    await r.zadd(f"{prefix}rl:d:strong-a:z", {"t1:4000": now - 1000, "t2:5000": now - 500, "old:9999": now - 61_000})
    usage = DeploymentUsage(mesh, r, prefix, poll_s=0.05)
    await usage.start()
    try:
        a = usage.get("strong-a")
        assert a is not None and (a.requests, a.tokens, a.tpm) == (2, 9000, 10_000)
        assert usage.get("strong-b") == Usage(0, 0, 100, 0)
        await r.zadd(f"{prefix}rl:d:strong-b:z", {"t3:10": now})
        await asyncio.sleep(0.3)  # the poll picks it up
        b = usage.get("strong-b")
        assert b is not None and b.requests == 1
    finally:
        await r.delete(f"{prefix}rl:d:strong-a:z", f"{prefix}rl:d:strong-b:z")
        await usage.close()
