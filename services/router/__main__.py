"""`python -m services.router`: the router service (default port 50053)."""

from __future__ import annotations

from services.router.service import RouterService
from services.router.settings import RouterSettings
from weir.kit.config import load_or_exit
from weir.kit.server import serve
from weir.mesh_config import load_mesh_config


def main() -> None:
    settings = load_or_exit(RouterSettings, "router")
    mesh = load_mesh_config()
    serve("router", lambda: RouterService(settings, mesh), settings.server, settings.port)


if __name__ == "__main__":
    main()
