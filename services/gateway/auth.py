"""API keys: the master (admin) key from the environment and team keys stored hashed in Redis."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("weir.gateway.auth")

DEFAULT_TEAM = "default"


def hash_key(raw: str) -> str:
    """Keys are stored and compared by SHA-256; the raw key is shown once and never stored or logged."""
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (hash prefix), its team (the tenant) and what it may do."""

    key_id: str
    team: str
    admin: bool = False
    allowed_models: tuple[str, ...] = ()


class AuthError(Exception):
    """No key, or a key that is unknown or revoked."""


class KeyStore:
    def __init__(self, redis: aioredis.Redis, master_key: str, prefix: str) -> None:
        self._redis = redis
        self._master = hash_key(master_key)
        self._prefix = prefix
        self._master_principal = Principal(key_id=self._master[:12], team=DEFAULT_TEAM, admin=True)

    def key_hash_field(self, digest: str) -> str:
        return f"{self._prefix}key:{digest}"

    async def authenticate(self, raw: str) -> Principal:
        if not raw:
            raise AuthError("missing API key: send `Authorization: Bearer <key>`")
        digest = hash_key(raw)
        if hmac.compare_digest(digest, self._master):
            return self._master_principal
        try:
            doc: dict[bytes, bytes] = await self._redis.hgetall(self.key_hash_field(digest))  # type: ignore[assignment]
        except RedisError as exc:
            log.warning("key store unavailable; only the master key is accepted", extra={"error": str(exc)})
            raise AuthError("key store unavailable; the key could not be checked") from exc
        if not doc or doc.get(b"revoked", b"0") == b"1":
            raise AuthError("invalid API key")
        models = doc.get(b"models", b"").decode()
        return Principal(
            key_id=digest[:12],
            team=doc.get(b"team", DEFAULT_TEAM.encode()).decode(),
            admin=doc.get(b"admin", b"0") == b"1",
            allowed_models=tuple(m for m in models.split(",") if m),
        )


def bearer(header: str | None) -> str:
    if not header:
        return ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
