"""`python -m services.embedder`: the EmbedderService process."""

from __future__ import annotations

import sys

from services.embedder.engine import EngineError
from services.embedder.service import EmbedderService
from services.embedder.settings import EmbedderSettings
from weir.kit.config import load_or_exit
from weir.kit.server import serve


def main() -> None:
    settings = load_or_exit(EmbedderSettings, "embedder")
    try:
        serve("embedder", lambda: EmbedderService(settings), settings.server, settings.port)
    except EngineError as exc:
        sys.exit(f"embedder: cannot start: {exc}")


if __name__ == "__main__":
    main()
