"""The `weir` command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from weir.cli import keys as keys_cli
from weir.cli.chaos import add_arguments as chaos_arguments
from weir.kit.config import REPO_ROOT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="weir", description="Weir: a token-aware gRPC mesh in front of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the whole mesh in the foreground")
    p_up.add_argument("--no-fake", action="store_true", help="never start the simulated provider")
    sub.add_parser("fake-llm", help="run the simulated OpenAI-compatible provider", add_help=False)
    p_model = sub.add_parser("model", help="embedding model tools")
    model_sub = p_model.add_subparsers(dest="model_command", required=True)
    p_export = model_sub.add_parser("export", help="export the bundled all-MiniLM-L6-v2 to ONNX (idempotent)")
    p_export.add_argument("--out", default="", help="model directory (default: the cache dir)")
    p_cache = sub.add_parser("cache", help="semantic cache tools")
    cache_sub = p_cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("eval", help="run the labelled evaluation set through the real cache (--help)",
                         add_help=False)
    keys_cli.add_parsers(sub)
    chaos_arguments(sub.add_parser("chaos", help="run the chaos suite (provider faults) against a mesh"))
    sub.add_parser("settings", help="every environment variable Weir reads: type, default, meaning (markdown)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "up":
        from weir.cli.up import up

        sys.exit(up(no_fake=args.no_fake))
    if args.command == "settings":
        from weir.cli.settings import main as settings_main

        sys.exit(settings_main())
    if args.command == "chaos":
        from weir.cli.chaos import chaos

        sys.exit(chaos(args))
    if args.command in ("keys", "teams", "usage"):
        sys.exit(keys_cli.run(args))
    if args.command == "fake-llm":
        from weir.fakellm.server import main as fake_main

        fake_main(rest)
        return
    if args.command == "cache" and args.cache_command == "eval":
        from services.cache.eval.run import main as cache_eval

        sys.exit(cache_eval(rest))
    if args.command == "model" and args.model_command == "export":
        script = REPO_ROOT / "scripts" / "export-model.sh"
        cmd = ["bash", str(script), *([args.out] if args.out else [])]
        sys.exit(subprocess.call(cmd, env=os.environ.copy()))
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    main()
