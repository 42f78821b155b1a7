"""`python -m services.cache`: the cache service (default port 50052)."""

from __future__ import annotations

from services.cache.service import CacheService
from services.cache.settings import CacheSettings
from weir.kit.config import load_or_exit
from weir.kit.server import serve


def main() -> None:
    settings = load_or_exit(CacheSettings, "cache")
    serve("cache", lambda: CacheService(settings), settings.server, settings.port)


if __name__ == "__main__":
    main()
