"""Admin REST API (keys and teams, admin key required) and the usage API (admin, or a key for its own usage).

    POST  /v1/admin/keys                  create: {team, name?, models?, rpm?, tpm?, budget_usd?, period?, admin?,
                                          preview? (its background jobs emit provisional previews)}
    GET   /v1/admin/keys[?team=]          list (never secrets)
    GET   /v1/admin/keys/{id}             one key, with its spend this period
    PATCH /v1/admin/keys/{id}             change name, models, rpm, tpm, budget_usd, period, preview
    POST  /v1/admin/keys/{id}/revoke      refused on every replica from the next request on
    POST  /v1/admin/keys/{id}/rotate      {grace_s?}: a new secret for the same key id
    POST  /v1/admin/keys/{id}/webhook-secret  a new webhook secret for the key ("master" too), shown once
    GET   /v1/admin/teams                 teams with their limits
    GET   /v1/admin/teams/{team}          one team, with its spend this period
    PUT   /v1/admin/teams/{team}          set rpm, tpm, budget_usd, period
    GET   /v1/usage                       aggregates: start, end (YYYY-MM-DD), team, key, model, group_by
    GET   /v1/usage/events                recent per-request events: limit, team, key

Limits of 0 mean "no limit". Secrets appear only in the answers to create, rotate and webhook-secret (create
also returns the key's webhook secret, which signs the webhooks of its background jobs).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.gateway.auth import NAME_RE, PERIODS, Conflict, KeyStore, NotFound, Principal
from services.gateway.ledger import GROUPS, MAX_DAYS, UsageReader
from services.gateway.openai_wire import ApiError
from services.gateway.pricing import nano

Authenticate = Callable[[web.Request], Awaitable[Principal]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _int(body: dict[str, Any], name: str, hi: int = 2**40) -> str:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise _bad(name, f"'{name}' must be an integer between 0 and {hi}")
    return str(value)


def _fields(body: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, str]:
    """Validated settings from a JSON body, as the strings stored in Redis."""
    unknown = set(body) - set(allowed)
    if unknown:
        raise _bad(sorted(unknown)[0], f"unknown fields {sorted(unknown)}; allowed: {list(allowed)}")
    out: dict[str, str] = {}
    for name in ("rpm", "tpm"):
        if name in body:
            out[name] = _int(body, name)
    if "budget_usd" in body:
        value = body["budget_usd"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e9:
            raise _bad("budget_usd", "'budget_usd' must be a number of dollars between 0 and 1e9")
        out["budget_nusd"] = str(nano(float(value)))
    if "period" in body:
        if body["period"] not in PERIODS:
            raise _bad("period", f"'period' must be one of {list(PERIODS)}")
        out["period"] = body["period"]
    if "name" in body:
        if not isinstance(body["name"], str) or len(body["name"]) > 128:
            raise _bad("name", "'name' must be a string of at most 128 characters")
        out["name"] = body["name"]
    if "models" in body:
        models = body["models"]
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        if not isinstance(models, list) or not all(isinstance(m, str) and m and "," not in m for m in models):
            raise _bad("models", "'models' must be a list of model ids")
        out["models"] = ",".join(models)
    for flag in ("admin", "preview"):
        if flag in body:
            if not isinstance(body[flag], bool):
                raise _bad(flag, f"'{flag}' must be a boolean")
            out[flag] = "1" if body[flag] else "0"
    return out


def _name(value: str, param: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise _bad(param, f"{param} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _date(value: str | None, default: dt.date, param: str) -> dt.date:
    if not value:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise _bad(param, f"'{param}' must be a date YYYY-MM-DD, got {value!r}") from exc


def _period_id(period: str) -> str:
    return time.strftime("d%Y%m%d" if period == "day" else "m%Y%m", time.gmtime())


class AdminApi:
    def __init__(self, keys: KeyStore, usage: UsageReader, authenticate: Authenticate) -> None:
        self.keys = keys
        self.usage = usage
        self.authenticate = authenticate

    def routes(self, app: web.Application) -> None:
        admin = self._admin_only
        app.router.add_post("/v1/admin/keys", admin(self.create_key))
        app.router.add_get("/v1/admin/keys", admin(self.list_keys))
        app.router.add_get("/v1/admin/keys/{key_id}", admin(self.get_key))
        app.router.add_patch("/v1/admin/keys/{key_id}", admin(self.update_key))
        app.router.add_post("/v1/admin/keys/{key_id}/revoke", admin(self.revoke_key))
        app.router.add_post("/v1/admin/keys/{key_id}/rotate", admin(self.rotate_key))
        app.router.add_post("/v1/admin/keys/{key_id}/webhook-secret", admin(self.reset_webhook_secret))
        app.router.add_get("/v1/admin/teams", admin(self.list_teams))
        app.router.add_get("/v1/admin/teams/{team}", admin(self.get_team))
        app.router.add_put("/v1/admin/teams/{team}", admin(self.set_team))
        app.router.add_get("/v1/usage", self._guarded(self.usage_report))
        app.router.add_get("/v1/usage/events", self._guarded(self.usage_events))

    def _guarded(self, handler: Callable[[web.Request, Principal], Awaitable[web.Response]]) -> Handler:
        async def run(request: web.Request) -> web.Response:
            principal = await self.authenticate(request)
            try:
                return await handler(request, principal)
            except NotFound as exc:
                raise ApiError(404, f"no API key {exc}", type="not_found_error", code="key_not_found") from exc
            except Conflict as exc:
                raise ApiError(409, str(exc), code="conflict") from exc
            except RedisError as exc:
                raise ApiError(503, "the key store is unavailable; try again shortly", type="service_unavailable",
                               code="policy_unavailable", headers={"Retry-After": "1"}) from exc
        return run

    def _admin_only(self, handler: Callable[[web.Request, Principal], Awaitable[web.Response]]) -> Handler:
        async def check(request: web.Request, principal: Principal) -> web.Response:
            if not principal.admin:
                raise ApiError(403, "this endpoint needs an admin key", type="permission_error",
                               code="admin_required")
            return await handler(request, principal)
        return self._guarded(check)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    # ---- keys ------------------------------------------------------------------------------------

    async def create_key(self, request: web.Request, _: Principal) -> web.Response:
        body = await self._body(request)
        team = body.pop("team", None)
        if not isinstance(team, str):
            raise ApiError(400, "'team' is required", param="team", code="missing_required_parameter")
        f = _fields(body, ("name", "models", "rpm", "tpm", "budget_usd", "period", "admin", "preview"))
        raw, webhook_secret, view = await self.keys.create_with_webhook_secret(
            team=_name(team, "team"), name=f.get("name", ""), models=tuple(m for m in f.get("models", "").split(",")
                                                                          if m),
            rpm=int(f.get("rpm", 0)), tpm=int(f.get("tpm", 0)), budget_nusd=int(f.get("budget_nusd", 0)),
            period=f.get("period", "month"), admin=f.get("admin") == "1", preview=f.get("preview") == "1")
        return _json({**view, "key": raw, "webhook_secret": webhook_secret}, 201)

    async def list_keys(self, request: web.Request, _: Principal) -> web.Response:
        team = request.query.get("team") or None
        return _json({"object": "list", "data": await self.keys.list_keys(team)})

    async def _key_with_spend(self, kid: str) -> dict[str, Any]:
        view = await self.keys.get(kid)
        view["spend_usd"] = await self.keys.spend("k", kid, _period_id(view["period"])) / 1e9
        return view

    async def get_key(self, request: web.Request, _: Principal) -> web.Response:
        return _json(await self._key_with_spend(request.match_info["key_id"]))

    async def update_key(self, request: web.Request, _: Principal) -> web.Response:
        changes = _fields(await self._body(request), ("name", "models", "rpm", "tpm", "budget_usd", "period",
                                                      "preview"))
        if not changes:
            raise ApiError(400, "nothing to change")
        await self.keys.update(request.match_info["key_id"], changes)
        return _json(await self._key_with_spend(request.match_info["key_id"]))

    async def revoke_key(self, request: web.Request, _: Principal) -> web.Response:
        return _json(await self.keys.revoke(request.match_info["key_id"]))

    async def rotate_key(self, request: web.Request, _: Principal) -> web.Response:
        body = await self._body(request)
        grace = int(_int(body, "grace_s", 30 * 86400)) if "grace_s" in body else 0
        raw, view = await self.keys.rotate(request.match_info["key_id"], grace)
        return _json({**view, "key": raw, "previous_key_valid_s": grace})

    async def reset_webhook_secret(self, request: web.Request, _: Principal) -> web.Response:
        kid = request.match_info["key_id"]
        secret = await self.keys.reset_webhook_secret(kid)
        return _json({"id": kid, "object": "webhook_secret", "webhook_secret": secret})

    # ---- teams -----------------------------------------------------------------------------------

    async def list_teams(self, request: web.Request, _: Principal) -> web.Response:
        return _json({"object": "list", "data": await self.keys.list_teams()})

    async def get_team(self, request: web.Request, _: Principal) -> web.Response:
        team = _name(request.match_info["team"], "team")
        view = await self.keys.get_team(team)
        view["spend_usd"] = await self.keys.spend("t", team, _period_id(view["period"])) / 1e9
        return _json(view)

    async def set_team(self, request: web.Request, _: Principal) -> web.Response:
        team = _name(request.match_info["team"], "team")
        changes = _fields(await self._body(request), ("rpm", "tpm", "budget_usd", "period"))
        await self.keys.set_team(team, changes)
        return await self.get_team(request, _)

    # ---- usage -----------------------------------------------------------------------------------

    def _scope(self, request: web.Request, principal: Principal) -> tuple[str | None, str | None]:
        """(team, key) filters: an admin may ask for anything, any other key only for itself."""
        team, key = request.query.get("team") or None, request.query.get("key") or None
        if principal.admin:
            return team, key
        if key not in (None, principal.key_id) or team not in (None, principal.team):
            raise ApiError(403, "a non-admin key may only read its own usage", type="permission_error",
                           code="admin_required")
        return None, principal.key_id

    async def usage_report(self, request: web.Request, principal: Principal) -> web.Response:
        team, key = self._scope(request, principal)
        today = dt.datetime.now(dt.UTC).date()
        end = _date(request.query.get("end"), today, "end")
        start = _date(request.query.get("start"), end - dt.timedelta(days=29), "start")
        if start > end or (end - start).days >= MAX_DAYS:
            raise _bad("start", f"start must be on or before end, and the range at most {MAX_DAYS} days")
        group_by = [g.strip() for g in request.query.get("group_by", "day,model").split(",") if g.strip()]
        if not group_by or any(g not in GROUPS for g in group_by) or len(set(group_by)) != len(group_by):
            raise _bad("group_by", f"'group_by' must list distinct fields of {list(GROUPS)}")
        return _json(await self.usage.aggregate(start, end, team=team, key=key,
                                                model=request.query.get("model") or None, group_by=group_by))

    async def usage_events(self, request: web.Request, principal: Principal) -> web.Response:
        team, key = self._scope(request, principal)
        raw_limit = request.query.get("limit", "100")
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 1000:
            raise _bad("limit", "'limit' must be an integer between 1 and 1000")
        events = await self.usage.events(int(raw_limit), team=team, key=key)
        return _json({"object": "list", "data": events})
