"""Webhook destinations: by default a tenant's URL may only reach public addresses (no SSRF into Weir's network)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import DestinationRefused, NoPublicAddress, PublicResolver, Webhooks, is_public
from weir.kit.config import load


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.9", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:8.8.8.8", True), ("not an address", False),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def webhooks(private_networks: bool) -> Webhooks:
    settings = load(GatewaySettings, {"WEIR_MASTER_KEY": "k" * 32,
                                      "WEIR_WEBHOOK_PRIVATE_NETWORKS": str(private_networks).lower()})
    return Webhooks(cast(Any, None), cast(Any, None), settings)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/", "http://[::1]/hook", "https://169.254.169.254/latest",
                                 "http://localhost:8080/x", "http://api.localhost/x", "http://10.0.0.7/hook",
                                 "http://[::ffff:7f00:1]/hook"])
def test_literal_private_destinations_are_refused_by_default(url: str) -> None:
    with pytest.raises(DestinationRefused, match="not a public address"):
        webhooks(private_networks=False)._check_destination(url)
    webhooks(private_networks=True)._check_destination(url)  # an internal receiver, allowed explicitly


def test_names_and_public_addresses_pass_the_literal_check() -> None:
    for url in ("https://hooks.example.com/weir", "http://8.8.8.8/hook"):
        webhooks(private_networks=False)._check_destination(url)


async def test_a_name_that_resolves_only_to_private_addresses_cannot_be_connected_to() -> None:
    resolver = PublicResolver()
    try:
        with pytest.raises(NoPublicAddress, match="no public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
