"""Webhook deliveries of finished jobs: signed with the key's webhook secret, retried with backoff.

The body is `{"type": "job.finished", "job": <the job as GET /v1/jobs/{id} shows it>}`; the signature header is
described in `weir.webhooks`. A delivery counts as done on any 2xx; other answers and transport errors are
retried `webhook_attempts` times in all, waiting `webhook_backoff_ms` doubled each time. The outcome is stored on
the job (`webhook`: status delivered | failed | skipped, attempts, last_status, delivered_at).

A webhook URL is a tenant's, so by default it may only reach public addresses: a name is resolved and
connected to through its public addresses only (so a name that resolves, or later re-resolves, to 127.0.0.1 or
169.254.169.254 is refused), a literal non-public address is refused, and redirects are not followed
(`WEIR_WEBHOOK_PRIVATE_NETWORKS=true` lifts this for internal receivers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from services.gateway.auth import KeyStore
from services.gateway.jobs import JobStore
from services.gateway.settings import GatewaySettings
from weir import webhooks

log = logging.getLogger("weir.gateway.webhooks")


def is_public(address: str) -> bool:
    """Whether an IP address is a public (globally routable) one; IPv4-mapped IPv6 is judged as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class NoPublicAddress(OSError):
    """A webhook host whose every address is a non-public one."""


class PublicResolver(AbstractResolver):
    """The default resolver, keeping only public addresses (the connection then uses those: no rebinding)."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        public = [r for r in await self._inner.resolve(host, port, family) if is_public(r["host"])]
        if not public:
            raise NoPublicAddress(f"{host} has no public address (WEIR_WEBHOOK_PRIVATE_NETWORKS is off)")
        return public

    async def close(self) -> None:
        await self._inner.close()


def refusal(url: str, private_networks: bool) -> str | None:
    """Why a webhook URL may not be delivered to, judged by its host as written (a name is judged as it resolves,
    by PublicResolver); None when it may."""
    if private_networks:
        return None
    host = (URL(url).host or "").strip("[]").lower()
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if host not in ("localhost", "localhost.localdomain") and not host.endswith(".localhost"):
            return None  # a name: PublicResolver keeps its public addresses only
    else:
        if is_public(host):
            return None
    return f"{host} is not a public address (WEIR_WEBHOOK_PRIVATE_NETWORKS is off)"


class Webhooks:
    def __init__(self, store: JobStore, keys: KeyStore, settings: GatewaySettings) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def deliver(self, job_id: str, doc: dict[str, bytes]) -> None:
        """Delivers in the background (never delays the worker)."""
        task = asyncio.get_running_loop().create_task(self._deliver(job_id, doc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.webhook_timeout_s)
        if self._session is not None:
            await self._session.close()

    async def _refuse(self, job_id: str, reason: str) -> None:
        log.warning("webhook refused", extra={"job_id": job_id, "reason": reason})
        await self._record(job_id, {"status": "failed", "attempts": 0, "last_status": "refused", "reason": reason})

    async def _record(self, job_id: str, outcome: dict[str, Any]) -> None:
        await self.store.redis.hset(self.store.job_key(job_id), "webhook", orjson.dumps(outcome))

    async def _deliver(self, job_id: str, doc: dict[str, bytes]) -> None:
        url = doc["webhook_url"].decode()
        secret = await self.keys.webhook_secret(doc["key_id"].decode())
        if not secret:
            await self._record(job_id, {"status": "skipped", "attempts": 0,
                                        "reason": "the key has no webhook secret (POST /v1/admin/keys/{id}/"
                                                  "webhook-secret creates one)"})
            return
        body = orjson.dumps({"type": "job.finished", "job": JobStore.view(job_id, doc)})
        if (refused := refusal(url, self.settings.webhook_private_networks)) is not None:
            await self._refuse(job_id, refused)  # submitted before the setting changed, or by a direct Redis write
            return
        if self._session is None:
            private = self.settings.webhook_private_networks
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s),
                connector=aiohttp.TCPConnector(resolver=None if private else PublicResolver()))
        last = ""
        for attempt in range(1, self.settings.webhook_attempts + 1):
            headers = {"Content-Type": "application/json", webhooks.HEADER: webhooks.sign(secret, body),
                       "X-Weir-Job-Id": job_id, "X-Weir-Delivery-Attempt": str(attempt)}
            try:
                async with self._session.post(url, data=body, headers=headers,
                                              allow_redirects=self.settings.webhook_private_networks) as resp:
                    last = str(resp.status)
                    if 200 <= resp.status < 300:
                        await self._record(job_id, {"status": "delivered", "attempts": attempt, "last_status": last,
                                                    "delivered_at": round(time.time(), 3)})
                        return
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, NoPublicAddress):  # no retry will change where the name points
                    await self._refuse(job_id, str(exc.os_error))
                    return
                last = type(exc).__name__
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = type(exc).__name__
            await self._record(job_id, {"status": "retrying", "attempts": attempt, "last_status": last})
            if attempt < self.settings.webhook_attempts:
                await asyncio.sleep(self.settings.webhook_backoff_ms / 1000 * 2 ** (attempt - 1))
        log.warning("webhook not delivered", extra={"job_id": job_id, "attempts": self.settings.webhook_attempts,
                                                    "last_status": last})
        await self._record(job_id, {"status": "failed", "attempts": self.settings.webhook_attempts,
                                    "last_status": last})
