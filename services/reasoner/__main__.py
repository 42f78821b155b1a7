"""`python -m services.reasoner`: the reasoner service (default port 50054)."""

from __future__ import annotations

from services.reasoner.service import ReasonerService
from services.reasoner.settings import ReasonerSettings
from weir.kit.config import load_or_exit
from weir.kit.server import serve
from weir.mesh_config import load_mesh_config


def main() -> None:
    settings = load_or_exit(ReasonerSettings, "reasoner")
    config = load_mesh_config()
    serve("reasoner", lambda: ReasonerService(settings, config), settings.server, settings.port)


if __name__ == "__main__":
    main()
