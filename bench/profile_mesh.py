"""Profile the mesh under load with py-spy: which functions each service spends its CPU in.

    .venv/bin/python -m bench.profile_mesh [--scenario miss|uncached|exact|semantic] [--seconds 20] [--concurrency 8]

Starts the mesh like `make bench`, drives the scenario through the REST bridge, samples every service with
`py-spy record` (installed with `pip install py-spy`; a dev tool, not a dependency) and prints, per service,
the functions with the most samples on the CPU (self time) and the most including callees. Collapsed stacks are
left in the state folder for flame graphs (`flamegraph.pl` or speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.mesh_bench import COUNTRIES, PARAPHRASES, STORED, body
from weir.devmesh import start_mesh
from weir.kit.redis_local import start_local_redis

SERVICES = ("gateway", "cache", "embedder", "router", "reasoner")


def summarise(path: Path, top: int) -> str:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].rsplit(":", 1)[0].rsplit("/", 1)[-1]
                  if " (" in f else f for f in stack.split(";")]
        total += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"  samples {total}", "  self:"]
    out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    out.append("  including callees:")
    out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top * 2)]
    return "\n".join(out)


async def drive(url: str, key: str, scenario: str, seconds: float, concurrency: int) -> int:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    run = os.urandom(3).hex()
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        for c in COUNTRIES:
            async with s.post(url, data=body("fake-small", STORED.format(c)), headers=headers) as r:
                await r.read()

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                i += 1
                temperature = 0.0
                if scenario in ("miss", "uncached"):
                    text = f"Unique question {run} {w} {i}?"
                    temperature = 0.7 if scenario == "uncached" else 0.0
                elif scenario == "exact":
                    text = STORED.format(COUNTRIES[i % len(COUNTRIES)])
                else:
                    text = PARAPHRASES[(i // len(COUNTRIES)) % len(PARAPHRASES)].format(COUNTRIES[i % len(COUNTRIES)])
                async with s.post(url, data=body("fake-small", text, temperature), headers=headers) as r:
                    await r.read()
                done += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("miss", "uncached", "exact", "semantic"), default="miss")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--milvus", choices=("server", "lite"), default="server")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--services", nargs="+", default=list(SERVICES))
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    state = Path(tempfile.mkdtemp(prefix="weir-profile-"))
    redis = start_local_redis(state / "redis")
    mesh = start_mesh(state, redis.url, {"WEIR_LOG_LEVEL": "warning"}, milvus=args.milvus)
    try:
        spies = {}
        for name in args.services:
            out = state / f"{name}.collapsed"
            spies[name] = (out, subprocess.Popen(
                [spy, "record", "--pid", str(mesh.procs[name].popen.pid), "--format", "raw", "--rate", "200",
                 "--duration", str(int(args.seconds) + 3), "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        n = asyncio.run(drive(f"{mesh.base_url}/chat/completions", mesh.master_key, args.scenario,
                              args.seconds, args.concurrency))
        print(f"{args.scenario}: {n} requests in {args.seconds:.0f} s at concurrency {args.concurrency}")
        for name, (out, proc) in spies.items():
            proc.wait()
            print(f"\n== {name}")
            print(summarise(out, args.top) if out.exists() else "  (no profile)")
        print(f"\ncollapsed stacks in {state}")
    finally:
        mesh.stop()
        redis.stop()


if __name__ == "__main__":
    main()
