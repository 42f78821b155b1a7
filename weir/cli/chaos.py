"""`weir chaos`: the chaos suite (weir/chaos.py) against a fresh mesh, or a running one, as a pass/fail table."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from weir.chaos import CHAOS_CONFIG, CHAOS_ENV, SCENARIOS, ChaosRunner, Scenario, ScenarioResult, format_table
from weir.kit.config import default_model_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default="", help="HTTP root of a running mesh (e.g. http://127.0.0.1:8080); "
                   "default: start a fresh mesh for the run")
    p.add_argument("--fake", default="", help="fake-llm root of that mesh (e.g. http://127.0.0.1:8090)")
    p.add_argument("--api-key", default=os.environ.get("WEIR_MASTER_KEY", ""),
                   help="key for the running mesh's gateway (default: WEIR_MASTER_KEY)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these scenarios")
    p.add_argument("--print-config", action="store_true",
                   help="print the model table and environment a running mesh needs for the suite, and exit")


async def _run(gateway: str, fake: str, key: str, scenarios: tuple[Scenario, ...]) -> list[ScenarioResult]:
    async with ChaosRunner(gateway, fake, key) as runner:
        return await runner.run(scenarios)


def _fresh(scenarios: tuple[Scenario, ...]) -> list[ScenarioResult]:
    from weir.devmesh import start_mesh
    from weir.kit.redis_local import start_local_redis

    with tempfile.TemporaryDirectory(prefix="weir-chaos-") as tmp:
        state = Path(tmp)
        config = state / "chaos.toml"
        config.write_text(CHAOS_CONFIG)
        redis = start_local_redis(state / "redis")
        try:
            print(f"starting a mesh (logs in {state / 'logs'}) ...", flush=True)
            mesh = start_mesh(state, redis.url, {"WEIR_CONFIG": str(config), **CHAOS_ENV})
            try:
                return asyncio.run(_run(mesh.http, mesh.fake_url, mesh.master_key, scenarios))
            finally:
                mesh.stop()
        finally:
            redis.stop()


def chaos(args: argparse.Namespace) -> int:
    if args.print_config:
        print(CHAOS_CONFIG)
        print("# environment of every mesh process:")
        for k, v in CHAOS_ENV.items():
            print(f"# {k}={v}")
        return 0
    unknown = set(args.only) - {s.name for s in SCENARIOS}
    if unknown:
        print(f"weir chaos: unknown scenarios {sorted(unknown)}; known: {', '.join(s.name for s in SCENARIOS)}",
              file=sys.stderr)
        return 2
    scenarios = tuple(s for s in SCENARIOS if not args.only or s.name in args.only)
    if args.gateway:
        if not args.fake or not args.api_key:
            print("weir chaos: --gateway needs --fake and --api-key (or WEIR_MASTER_KEY); the mesh must run the "
                  "table and environment of `weir chaos --print-config`", file=sys.stderr)
            return 2
        results = asyncio.run(_run(args.gateway, args.fake, args.api_key, scenarios))
    else:
        model_dir = Path(os.environ.get("WEIR_EMBEDDER_MODEL_DIR") or default_model_dir())
        if not (model_dir / "model.onnx").exists():
            print(f"weir chaos: no exported embedding model at {model_dir}; run `make model` first", file=sys.stderr)
            return 2
        results = _fresh(scenarios)
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1
