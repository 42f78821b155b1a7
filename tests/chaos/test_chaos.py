"""The chaos suite through the whole mesh: every scenario of weir/chaos.py (the same table `weir chaos` runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from weir.chaos import CHAOS_CONFIG, CHAOS_ENV, PRIMARY, SCENARIOS, ChaosRunner, Scenario, format_table
from weir.devmesh import Mesh, start_mesh
from weir.kit.redis_local import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: Path) -> Iterator[Mesh]:
    """One mesh on the chaos model table (primary -> fallback -> large), with short timeouts and cool-downs."""
    state = tmp_path_factory.mktemp("chaos")
    config = state / "chaos.toml"
    config.write_text(CHAOS_CONFIG)
    m = start_mesh(state, redis_server.url, {"WEIR_CONFIG": str(config), **CHAOS_ENV})
    yield m
    m.stop()


@pytest.fixture(scope="module")
async def runner(mesh: Mesh) -> AsyncIterator[ChaosRunner]:
    async with ChaosRunner(mesh.http, mesh.fake_url, mesh.master_key) as r:
        yield r


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(runner: ChaosRunner, scenario: Scenario) -> None:
    result = await runner.run_scenario(scenario)
    print(format_table([result]))
    assert result.ok, "\n".join(result.problems) + "\n\n" + format_table([result])


BROKEN_STREAMS = [s for s in SCENARIOS if any(step.stream and not step.done for step in s.steps)]


@pytest.mark.parametrize("scenario", BROKEN_STREAMS, ids=[s.name for s in BROKEN_STREAMS])
async def test_openai_client_raises_on_a_broken_stream(mesh: Mesh, runner: ChaosRunner, scenario: Scenario) -> None:
    """What an application sees: the official client raises mid-stream instead of returning a short answer."""
    step = next(step for step in scenario.steps if step.stream and not step.done)
    await runner.settle()
    await runner.http.post(runner.fake + "/_fake/faults", json={"faults": [
        {"fault": f.spec, "count": f.count, "model": f.model} for f in step.faults]})
    client = openai.AsyncOpenAI(base_url=mesh.base_url, api_key=mesh.master_key, max_retries=0)
    received = ""
    text = f"client {scenario.name} {runner.nonce}"
    with pytest.raises(openai.APIError) as info:
        stream = await client.chat.completions.create(
            model=PRIMARY, stream=True, messages=[{"role": "user", "content": text}],
            extra_headers={"Cache-Control": "no-cache, no-store"})
        async for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    await client.close()
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == step.error
    assert received.startswith(f"[{PRIMARY}:")  # it had begun answering: the error came mid-stream
