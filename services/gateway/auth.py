"""API keys and teams: the master (admin) key from the environment, team keys stored hashed in Redis.

    {P}key:{sha256(raw)}  -> key id (a key may have two secrets for a while after a rotation with grace)
    {P}keyinfo:{id}       hash: team, name, models (csv), rpm, tpm, budget_nusd, period, admin, created, revoked,
                          revoked_at, rotated_at, hint ("wk-…abcd"), hash (current secret's sha256)
    {P}keys               set of key ids
    {P}teaminfo:{team}    hash: rpm, tpm, budget_nusd, period, updated
    {P}teams              set of teams with settings

A raw key (`wk-` + 43 random URL-safe characters) is shown once, when it is created or rotated; only its SHA-256
is stored and it is never logged. Lists, the ledger and the logs show the key id (`key_` + 12 hex). Every
change is published on `{P}keys:changed` so replicas drop what they remember of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("weir.gateway.auth")

DEFAULT_TEAM = "default"
MASTER_KEY_ID = "master"
PERIODS = ("day", "month")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")  # matched whole (fullmatch)

_AUTH = r"""
local kid = redis.call('GET', KEYS[1])
if not kid then return false end
local doc = redis.call('HMGET', ARGV[1] .. 'keyinfo:' .. kid, 'team', 'revoked', 'models', 'admin')
if not doc[1] then return false end
return {kid, doc[1], doc[2] or '0', doc[3] or '', doc[4] or '0'}
"""


def hash_key(raw: str) -> str:
    """Keys are stored and compared by SHA-256; the raw key is shown once and never stored or logged."""
    return hashlib.sha256(raw.encode()).hexdigest()


def new_raw_key() -> str:
    return "wk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its team (the tenant) and what it may do."""

    key_id: str
    team: str
    admin: bool = False
    allowed_models: tuple[str, ...] = ()


class AuthError(Exception):
    """No key, or a key that is unknown or revoked."""


class StoreUnavailable(AuthError):
    """The key store (Redis) could not be reached, so the key could not be checked."""


class NotFound(Exception):
    """No such key."""


class Conflict(Exception):
    """The key is in a state that does not allow the operation (e.g. rotating a revoked key)."""


def _decode(doc: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in doc.items()}


def key_view(kid: str, doc: dict[str, str]) -> dict[str, Any]:
    """A key as the admin API shows it: never the secret nor its hash."""
    return {
        "id": kid, "object": "api_key", "name": doc.get("name", ""), "team": doc.get("team", DEFAULT_TEAM),
        "models": [m for m in doc.get("models", "").split(",") if m], "rpm": int(doc.get("rpm", 0)),
        "tpm": int(doc.get("tpm", 0)), "budget_usd": int(doc.get("budget_nusd", 0)) / 1e9,
        "period": doc.get("period", "month"), "admin": doc.get("admin") == "1",
        "created": int(doc.get("created", 0)), "revoked": doc.get("revoked") == "1",
        "revoked_at": int(doc.get("revoked_at", 0)) or None, "rotated_at": int(doc.get("rotated_at", 0)) or None,
        "hint": doc.get("hint", ""), "preview": doc.get("preview") == "1",
    }


def team_view(team: str, doc: dict[str, str]) -> dict[str, Any]:
    return {"team": team, "object": "team", "rpm": int(doc.get("rpm", 0)), "tpm": int(doc.get("tpm", 0)),
            "budget_usd": int(doc.get("budget_nusd", 0)) / 1e9, "period": doc.get("period", "month"),
            "updated": int(doc.get("updated", 0)) or None}


class KeyStore:
    def __init__(self, redis: aioredis.Redis, master_key: str, prefix: str) -> None:
        self._redis: Any = redis  # redis-py's command annotations do not follow decode_responses
        self._master = hash_key(master_key)
        self._prefix = prefix
        self.master = Principal(key_id=MASTER_KEY_ID, team=DEFAULT_TEAM, admin=True)
        self.changes_channel = f"{prefix}keys:changed"
        self._auth = redis.register_script(_AUTH)

    def is_master(self, digest: str) -> bool:
        return hmac.compare_digest(digest, self._master)

    def _k(self, name: str) -> str:
        return self._prefix + name

    # ---- authentication (endpoints other than chat; chat authenticates inside the admission script) ----

    async def authenticate(self, raw: str) -> Principal:
        if not raw:
            raise AuthError("missing API key: send `Authorization: Bearer <key>`")
        digest = hash_key(raw)
        if self.is_master(digest):
            return self.master
        try:
            r = await self._auth(keys=[self._k("key:" + digest)], args=[self._prefix])
        except RedisError as exc:
            log.warning("key store unavailable; only the master key is accepted", extra={"error": type(exc).__name__})
            raise StoreUnavailable("key store unavailable; the key could not be checked") from exc
        if not r:
            raise AuthError("invalid API key")
        kid, team, revoked, models, admin = (v.decode() for v in r)
        if revoked == "1":
            raise AuthError(f"API key {kid} has been revoked")
        return Principal(key_id=kid, team=team, admin=admin == "1",
                         allowed_models=tuple(m for m in models.split(",") if m))

    async def for_job(self, kid: str) -> tuple[str, bool]:
        """The current secret's SHA-256 of key `kid`, to admit work submitted with it (background jobs store
        the key id, never the secret), and whether the key asks for previews; raises AuthError when the key is
        gone or revoked."""
        if kid == MASTER_KEY_ID:
            return self._master, False
        try:
            digest, revoked, preview = await self._redis.hmget(self._k("keyinfo:" + kid), "hash", "revoked",
                                                               "preview")
        except RedisError as exc:
            raise StoreUnavailable("key store unavailable; the key could not be checked") from exc
        if digest is None:
            raise AuthError(f"API key {kid} no longer exists")
        if revoked == b"1":
            raise AuthError(f"API key {kid} has been revoked")
        return str(digest.decode()), preview == b"1"

    async def webhook_secret(self, kid: str) -> str:
        """The key's webhook secret ("" when it has none)."""
        return (await self._redis.get(self._k("whsec:" + kid)) or b"").decode()

    async def reset_webhook_secret(self, kid: str) -> str:
        """A new webhook secret for key `kid` (any key, the master key included); shown once."""
        if kid != MASTER_KEY_ID:
            await self.get(kid)
        secret = "whsec_" + secrets.token_urlsafe(32)
        await self._redis.set(self._k("whsec:" + kid), secret)
        log.info("webhook secret reset", extra={"key_id": kid})
        return secret

    # ---- keys --------------------------------------------------------------------------------------

    async def create(self, *, team: str, name: str = "", models: tuple[str, ...] = (), rpm: int = 0, tpm: int = 0,
                     budget_nusd: int = 0, period: str = "month", admin: bool = False,
                     preview: bool = False) -> tuple[str, dict[str, Any]]:
        """A new key; returns the raw secret (shown once) and the key's view."""
        raw = new_raw_key()
        digest = hash_key(raw)
        kid = "key_" + secrets.token_hex(6)
        doc = {"team": team, "name": name, "models": ",".join(models), "rpm": str(rpm), "tpm": str(tpm),
               "budget_nusd": str(budget_nusd), "period": period, "admin": "1" if admin else "0",
               "preview": "1" if preview else "0", "created": str(int(time.time())), "revoked": "0",
               "hint": f"wk-…{raw[-4:]}", "hash": digest}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("keyinfo:" + kid), mapping=doc)
            pipe.set(self._k("key:" + digest), kid)
            pipe.sadd(self._k("keys"), kid)
            await pipe.execute()
        log.info("api key created", extra={"key_id": kid, "team": team})
        return raw, key_view(kid, doc)

    async def create_with_webhook_secret(self, **fields: Any) -> tuple[str, str, dict[str, Any]]:
        """A new key and its webhook secret (both shown once)."""
        raw, view = await self.create(**fields)
        return raw, await self.reset_webhook_secret(view["id"]), view

    async def get(self, kid: str) -> dict[str, Any]:
        doc = _decode(await self._redis.hgetall(self._k("keyinfo:" + kid)))
        if not doc:
            raise NotFound(kid)
        return key_view(kid, doc)

    async def list_keys(self, team: str | None = None) -> list[dict[str, Any]]:
        ids = sorted(m.decode() for m in await self._redis.smembers(self._k("keys")))
        async with self._redis.pipeline(transaction=False) as pipe:
            for kid in ids:
                pipe.hgetall(self._k("keyinfo:" + kid))
            docs = await pipe.execute()
        out = [key_view(kid, _decode(doc)) for kid, doc in zip(ids, docs, strict=True) if doc]
        out = [k for k in out if team is None or k["team"] == team]
        return sorted(out, key=lambda k: (k["created"], k["id"]))

    async def update(self, kid: str, changes: dict[str, str]) -> dict[str, Any]:
        await self.get(kid)
        await self._redis.hset(self._k("keyinfo:" + kid), mapping=changes)
        await self._redis.publish(self.changes_channel, kid)
        log.info("api key updated", extra={"key_id": kid, "fields": sorted(changes)})
        return await self.get(kid)

    async def revoke(self, kid: str) -> dict[str, Any]:
        """Revoked at once on every replica: the admission script reads the flag on every request."""
        info = self._k("keyinfo:" + kid)
        digest = await self._redis.hget(info, "hash")
        if digest is None:
            raise NotFound(kid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(info, mapping={"revoked": "1", "revoked_at": str(int(time.time()))})
            pipe.delete(self._k("key:" + digest.decode()))
            pipe.publish(self.changes_channel, kid)
            await pipe.execute()
        log.info("api key revoked", extra={"key_id": kid})
        return await self.get(kid)

    async def rotate(self, kid: str, grace_s: int = 0) -> tuple[str, dict[str, Any]]:
        """A new secret for the same key id (same team, limits and ledger); the old secret stops working at
        once, or after `grace_s` seconds."""
        view = await self.get(kid)
        if view["revoked"]:
            raise Conflict(f"key {kid} is revoked")
        info = self._k("keyinfo:" + kid)
        old = (await self._redis.hget(info, "hash") or b"").decode()
        raw = new_raw_key()
        digest = hash_key(raw)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("key:" + digest), kid)
            pipe.hset(info, mapping={"hash": digest, "hint": f"wk-…{raw[-4:]}", "rotated_at": str(int(time.time()))})
            if old and grace_s > 0:
                pipe.expire(self._k("key:" + old), grace_s)
            elif old:
                pipe.delete(self._k("key:" + old))
            pipe.publish(self.changes_channel, kid)
            await pipe.execute()
        log.info("api key rotated", extra={"key_id": kid, "grace_s": grace_s})
        return raw, await self.get(kid)

    async def spend(self, scope: str, ident: str, period_id: str) -> int:
        """Nano-dollars charged in a period ("d20250131" / "m202501"), reservations in flight included."""
        value = await self._redis.get(self._k(f"spend:{scope}:{ident}:{period_id}"))
        return int(value or 0)

    # ---- teams -------------------------------------------------------------------------------------

    async def set_team(self, team: str, changes: dict[str, str]) -> dict[str, Any]:
        changes = {**changes, "updated": str(int(time.time()))}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("teaminfo:" + team), mapping=changes)
            pipe.sadd(self._k("teams"), team)
            pipe.publish(self.changes_channel, "*")
            await pipe.execute()
        log.info("team updated", extra={"team": team, "fields": sorted(changes)})
        return await self.get_team(team)

    async def get_team(self, team: str) -> dict[str, Any]:
        return team_view(team, _decode(await self._redis.hgetall(self._k("teaminfo:" + team))))

    async def list_teams(self) -> list[dict[str, Any]]:
        teams = {m.decode() for m in await self._redis.smembers(self._k("teams"))}
        teams |= {k["team"] for k in await self.list_keys()}
        return [await self.get_team(t) for t in sorted(teams)]


def bearer(header: str | None) -> str:
    if not header:
        return ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
