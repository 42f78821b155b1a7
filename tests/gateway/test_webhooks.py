"""Webhook destinations: by default a tenant's URL may only reach public addresses (no SSRF into Weir's network)."""

from __future__ import annotations

import pytest

from services.gateway.jobs_api import job_options
from services.gateway.openai_wire import ApiError
from services.gateway.webhooks import NoPublicAddress, PublicResolver, is_public, refusal


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.9", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:8.8.8.8", True), ("not an address", False),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/", "http://[::1]/hook", "https://169.254.169.254/latest",
                                 "http://localhost:8080/x", "http://api.localhost/x", "http://10.0.0.7/hook",
                                 "http://[::ffff:7f00:1]/hook"])
def test_literal_private_destinations_are_refused_by_default(url: str) -> None:
    assert "is not a public address" in (refusal(url, private_networks=False) or "")
    assert refusal(url, private_networks=True) is None  # an internal receiver, allowed explicitly


def test_names_and_public_addresses_pass_the_literal_check() -> None:
    for url in ("https://hooks.example.com/weir", "http://8.8.8.8/hook"):
        assert refusal(url, private_networks=False) is None


async def test_a_name_that_resolves_only_to_private_addresses_cannot_be_connected_to() -> None:
    resolver = PublicResolver()
    try:
        with pytest.raises(NoPublicAddress, match="no public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


def test_a_job_naming_a_non_public_webhook_is_refused_when_submitted() -> None:
    with pytest.raises(ApiError) as err:
        job_options({"webhook_url": "http://169.254.169.254/latest/meta-data"}, private_networks=False)
    assert err.value.status == 400 and err.value.param == "webhook_url" and "not a public address" in err.value.message
    assert job_options({"webhook_url": "http://127.0.0.1:9000/hook"}, private_networks=True)[0] == (
        "http://127.0.0.1:9000/hook")
    assert job_options({"webhook_url": "https://hooks.example.com/x"}, private_networks=False)[0] == (
        "https://hooks.example.com/x")
