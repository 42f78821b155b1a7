"""`python -m services.gateway`: the REST bridge and GatewayService."""

from __future__ import annotations

from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings
from weir.kit.config import load_or_exit
from weir.kit.server import serve


def main() -> None:
    settings = load_or_exit(GatewaySettings, "gateway")
    serve("gateway", lambda: GatewayService(settings), settings.server, settings.port)


if __name__ == "__main__":
    main()
