"""The router's gRPC servicer: protobuf in and out around the pure policy in policy.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
import redis.asyncio as aioredis

from services.router.health import HealthBook
from services.router.policy import Router
from services.router.scorer import Scorer, StrongScorer, load_scorer
from services.router.settings import RouterSettings
from services.router.usage import DeploymentUsage
from weir.common.v1 import types_pb2
from weir.kit import semconv as sc
from weir.kit import telemetry
from weir.mesh_config import MeshConfig, load_mesh_config
from weir.router.v1 import router_service_pb2 as pb
from weir.router.v1 import router_service_pb2_grpc as pb_grpc

log = logging.getLogger("weir.router")


def build_router(
    settings: RouterSettings, mesh: MeshConfig, clock: Callable[[], float] = time.monotonic,
    usage: DeploymentUsage | None = None,
) -> Router:
    """The policy for `mesh`: the trained scorer when WEIR_ROUTER_SCORER_PATH names one, else the prior."""
    scorer: StrongScorer
    if settings.scorer_path is not None:
        scorer = load_scorer(settings.scorer_path)
        prior = Scorer.prior(scorer.dim, settings.prior_midpoint_tokens)
    else:
        scorer = prior = Scorer.prior(settings.embedding_dim, settings.prior_midpoint_tokens)
    return Router(mesh, scorer, prior, HealthBook(settings.health_policy, clock), settings.quality_bias,
                  usage, settings.full_share)


def list_models_response(mesh: MeshConfig) -> pb.ListModelsResponse:
    """Virtual models first, then concrete ones, in table order.

    A virtual model has no price of its own (it depends on each decision); its context window is the
    largest of its members', since the router sends prompts that do not fit the weak model elsewhere.
    """
    out = pb.ListModelsResponse()
    for v in mesh.virtual_models.values():
        members = [mesh.models[ref] for ref in (v.strong, v.weak, *v.fallbacks)]
        out.models.add(id=v.id, tier="virtual", virtual=True,
                       context_window=max(m.context_window for m in members))
    for m in mesh.models.values():
        out.models.add(
            id=m.id,
            provider=m.provider,
            input_usd_per_mtok=m.input_usd_per_mtok,
            output_usd_per_mtok=m.output_usd_per_mtok,
            cached_input_usd_per_mtok=m.cached_input_usd_per_mtok,
            context_window=m.context_window,
            tier=m.tier,
            virtual=False,
        )
    return out


class RouterService(pb_grpc.RouterServiceServicer):
    """Route, ListModels and ReportOutcome over one model table (read once at start-up)."""

    service_names: tuple[str, ...] = (pb.DESCRIPTOR.services_by_name["RouterService"].full_name,)

    def __init__(self, settings: RouterSettings, mesh: MeshConfig | None = None) -> None:
        self.settings = settings
        self.mesh = mesh or load_mesh_config()
        redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5) \
            if settings.redis_url else None
        self.usage = DeploymentUsage(self.mesh, redis, settings.redis_prefix, settings.usage_poll_s)
        self.router = build_router(settings, self.mesh, usage=self.usage)
        self._models = list_models_response(self.mesh)
        self._targets = {m.id: types_pb2.RouteTarget(model=m.id, provider=m.provider)
                         for m in self.mesh.models.values()}

    async def start(self) -> None:
        await self.usage.start()
        scorer = self.router.scorer
        log.info(
            "router ready",
            extra={
                "config": self.mesh.source,
                "models": list(self.mesh.models),
                "virtual_models": list(self.mesh.virtual_models),
                "scorer": str(self.settings.scorer_path or "prior"),
                "scorer_name": scorer.name,
                "scorer_embedding_model": scorer.embedding_model_id,
                "scorer_description": scorer.description,
                "embedding_dim": scorer.dim,
                "quality_bias": self.settings.quality_bias,
            },
        )

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RouterServiceServicer_to_server(self, server)

    async def close(self) -> None:
        """Stops reading deployment usage; everything else is in-memory state."""
        await self.usage.close()

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        emb = request.embedding
        decision = self.router.route(
            request.requested_model,
            prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens,
            embedding=emb.vector,
            embedding_dim=emb.dim,
            embedding_model_id=emb.model_id,
            allowed_models=request.allowed_models,
            quality_bias=request.quality_bias,
        )
        telemetry.set_attributes({
            sc.GEN_AI_REQUEST_MODEL: request.requested_model, sc.WEIR_ROUTE_MODEL: decision.plan[0].id,
            sc.WEIR_ROUTE_REASON: decision.reason, sc.WEIR_ROUTE_TIER: decision.tier,
            sc.WEIR_ROUTE_STRONG_PROBABILITY: decision.strong_probability,
            sc.WEIR_ROUTE_PLAN: [m.id for m in decision.plan], sc.WEIR_TENANT: request.tenant or None})
        return pb.RouteResponse(
            plan=[self._targets[m.id] for m in decision.plan],
            reason=decision.reason,
            strong_probability=decision.strong_probability,
            tier=decision.tier,
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return self._models

    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        rec = self.router.report(
            request.target.model,
            request.target.provider,
            success=request.success,
            latency_ms=request.latency_ms,
            http_status=request.http_status,
            retry_after_s=request.retry_after_s,
        )
        health = self.router.health
        remaining = 0.0 if request.success else health.cooldown_remaining(request.target.model, health.clock())
        if remaining > 0:
            log.warning(
                "model cooling down",
                extra={"model": request.target.model, "failures": rec.consecutive_failures,
                       "cooldown_s": round(remaining, 1), "http_status": request.http_status},
            )
        return pb.ReportOutcomeResponse()
