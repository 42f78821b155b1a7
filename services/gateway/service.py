"""The gateway process: gRPC GatewayService and the REST bridge on one event loop, sharing one hub."""

from __future__ import annotations

import logging

import grpc
import redis.asyncio as aioredis
from aiohttp import web

from services.gateway.auth import KeyStore
from services.gateway.core import Core
from services.gateway.grpc_api import GatewayServicer
from services.gateway.jobs import JobStore
from services.gateway.ledger import UsageReader
from services.gateway.metrics import GatewayMetrics
from services.gateway.rest import MALFORMED_HTTP, RestApi
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import Webhooks
from services.gateway.worker import JobWorker
from weir.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc


class GatewayService:
    service_names: tuple[str, ...] = (gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,)
    #: Its clients are applications that authenticate with call metadata (API keys): gRPC calls only, no MuxService.
    multiplexed = False

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.listener_redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0)
        self.keys = KeyStore(self.redis, settings.master_key, settings.redis_prefix)
        self.metrics = GatewayMetrics()
        self.core = Core(settings, self.keys, self.metrics, self.listener_redis)
        self.policy, self.hub = self.core.policy, self.core.hub
        # Jobs: short commands on a client with a longer timeout; blocking stream reads on one without any.
        self.jobs_redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=1.0)
        self.blocking_redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0)
        self.jobs = JobStore(self.jobs_redis, self.blocking_redis, settings.redis_prefix,
                             result_ttl_s=settings.jobs_result_ttl_s,
                             webhook_private_networks=settings.webhook_private_networks)
        self.worker = JobWorker(settings, self.hub, self.keys, self.jobs, self.blocking_redis,
                                Webhooks(self.jobs, self.keys, settings)) if settings.jobs_in_gateway else None
        self.rest = RestApi(self.hub, self.keys, self.redis, self.metrics,
                            UsageReader(self.redis, settings.redis_prefix), settings.max_body_bytes, self.jobs)
        self._runner: web.AppRunner | None = None
        self._http = ""

    def register(self, server: grpc.aio.Server) -> None:
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(self.hub, self.keys, self.jobs),
                                                             server)

    async def start(self) -> None:
        await self.core.start()
        await self.jobs.ensure_group()
        if self.worker is not None:
            await self.worker.start()
        logging.getLogger("aiohttp.server").addFilter(MALFORMED_HTTP)  # the same object: added once
        self._runner = web.AppRunner(self.rest.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port, backlog=1024,
                           reuse_address=True, reuse_port=self.settings.server.reuse_port or None)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        self._http = f"{host}:{port}"

    def ready_info(self) -> dict[str, str]:
        return {"http": self._http}

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.worker is not None:
            await self.worker.close(self.settings.server.grace_s)
        await self.core.close()
        for client in (self.redis, self.listener_redis, self.jobs_redis, self.blocking_redis):
            await client.aclose()
