"""Signing and verifying Weir's webhooks (for receivers: `weir.webhooks.verify`).

Every delivery carries `X-Weir-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`, where
the secret is the submitting key's webhook secret (shown once, when the key is created or the secret reset).
A receiver recomputes the HMAC over the raw body, compares in constant time, and refuses a timestamp older
than its tolerance (a replayed delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Weir-Signature"


class SignatureError(ValueError):
    """The signature header is missing or malformed, does not match, or is too old."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for `body` at `timestamp` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300.0, now: float | None = None) -> int:
    """Checks a delivery's signature header against its raw body; returns the signed timestamp.

    Raises SignatureError when the header is malformed, no v1 signature matches, or the timestamp is more than
    `tolerance_s` seconds away from now."""
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"malformed {HEADER} header: no timestamp") from None
    if not parts.get("v1"):
        raise SignatureError(f"malformed {HEADER} header: no v1 signature")
    expected = sign(secret, body, t).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, given) for given in parts["v1"]):
        raise SignatureError("signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        raise SignatureError(f"timestamp is {current - t:.0f}s old (tolerance {tolerance_s:.0f}s): a replay?")
    return t
