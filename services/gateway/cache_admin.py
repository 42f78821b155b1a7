"""Cache statistics and invalidation over REST, on the cache service's GetStats and Invalidate.

    GET  /v1/admin/cache/stats[?team=T]    entries, hits, hit rate per tier, refusals per verifier check
    POST /v1/admin/cache/invalidate        {team?, entry_id | model | all: true} -> {team, removed}

A key sees and clears its own team's cache (the team is the cache tenant); an admin key may name any
team, and GET without a team reports all teams together. Errors are OpenAI-style JSON (ApiError).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from aiohttp import web

from services.gateway.auth import Principal
from services.gateway.openai_wire import ApiError
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.cache.v1 import cache_service_pb2_grpc as cache_grpc
from weir.kit.errors import parse_rpc_error

Authenticate = Callable[[web.Request], Awaitable[Principal]]
_SCOPES = ("entry_id", "model", "all")


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _from_rpc(exc: grpc.RpcError) -> ApiError:
    err = parse_rpc_error(exc)
    if err.code == grpc.StatusCode.INVALID_ARGUMENT:
        param = err.field_violations[0][0] if err.field_violations else None
        return ApiError(400, err.message, param=param, code="invalid_value")
    if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        retry = str(max(1, round(err.retry_after_s or 1)))
        return ApiError(503, f"the cache is unavailable: {err.message}", type="service_unavailable",
                        code="cache_unavailable", headers={"Retry-After": retry})
    return ApiError(502, f"the cache failed: {err.message}", type="api_error", code="cache_error")


def stats_json(team: str, s: cache_pb.GetStatsResponse) -> dict[str, Any]:
    """The REST form of GetStatsResponse."""
    return {
        "object": "cache.stats",
        "team": team or None,
        "entries": {"exact": s.exact_entries, "semantic": s.semantic_entries},
        "lookups": {"exact": s.exact_lookups, "semantic": s.semantic_lookups},
        "hits": {"exact": s.exact_hits, "semantic": s.semantic_hits},
        "hit_rate": {"exact": round(s.exact_hit_rate, 4), "semantic": round(s.semantic_hit_rate, 4)},
        "misses": s.misses,
        "refusals_by_check": dict(sorted(s.refusals_by_check.items())),
    }


class CacheAdminApi:
    """The two endpoints, calling the cache over the gateway's channel."""

    def __init__(self, cache: cache_grpc.CacheServiceAsyncStub, authenticate: Authenticate,
                 timeout_s: float = 5.0) -> None:
        self.cache = cache
        self.authenticate = authenticate
        self.timeout_s = timeout_s

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/admin/cache/stats", self.stats)
        app.router.add_post("/v1/admin/cache/invalidate", self.invalidate)

    @staticmethod
    def _team(principal: Principal, asked: Any, required_for_admin: bool) -> str:
        """The team the call acts on: the caller's own, or for an admin the one asked for."""
        if asked is not None and (not isinstance(asked, str) or not asked.strip()):
            raise ApiError(400, "'team' must be a non-empty string", param="team", code="invalid_value")
        if not principal.admin:
            if asked is not None and asked != principal.team:
                raise ApiError(403, "a key may only see and clear its own team's cache", type="permission_error",
                               code="team_forbidden")
            return principal.team
        if asked is None and required_for_admin:
            raise ApiError(400, "'team' is required with an admin key", param="team",
                           code="missing_required_parameter")
        return asked or ""

    async def stats(self, request: web.Request) -> web.Response:
        principal = await self.authenticate(request)
        team = self._team(principal, request.query.get("team"), required_for_admin=False)
        try:
            resp = await self.cache.GetStats(cache_pb.GetStatsRequest(tenant=team), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _from_rpc(exc) from exc
        return _json(stats_json(team, resp))

    async def invalidate(self, request: web.Request) -> web.Response:
        principal = await self.authenticate(request)
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        unknown = set(body) - {"team", *_SCOPES}
        if unknown:
            raise ApiError(400, f"unknown fields {sorted(unknown)}; allowed: team, entry_id, model, all",
                           param=sorted(unknown)[0], code="invalid_value")
        team = self._team(principal, body.get("team"), required_for_admin=True)
        scopes = [k for k in _SCOPES if body.get(k) not in (None, False, "")]
        if len(scopes) != 1:
            raise ApiError(400, "give exactly one of 'entry_id', 'model' or 'all': true", param="scope",
                           code="invalid_value")
        req = cache_pb.InvalidateRequest(tenant=team)
        scope = scopes[0]
        if scope == "all":
            if body["all"] is not True:
                raise ApiError(400, "'all' must be true", param="all", code="invalid_value")
            req.all = True
        elif not isinstance(body[scope], str):
            raise ApiError(400, f"'{scope}' must be a string", param=scope, code="invalid_value")
        elif scope == "entry_id":
            req.entry_id = body[scope]
        else:
            req.model = body[scope]
        try:
            resp = await self.cache.Invalidate(req, timeout=max(self.timeout_s, 30.0))
        except grpc.RpcError as exc:
            raise _from_rpc(exc) from exc
        return _json({"object": "cache.invalidation", "team": team, scope: body[scope], "removed": resp.removed})
