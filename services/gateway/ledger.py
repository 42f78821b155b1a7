"""The ledger's read side: aggregates per day (by team, key, model) and the recent per-request events.

Written by the settlement script (lua.SETTLE) and, for refusals, by the admission script:

    {P}usage:{YYYYMMDD}   hash "team|key|model|metric" -> integer (UTC days; kept WEIR_GATEWAY_USAGE_RETENTION_DAYS)
    {P}ledger             stream of per-request events (field "e", JSON), capped at WEIR_GATEWAY_LEDGER_EVENTS
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

GROUPS = ("day", "team", "key", "model")
COUNTS = ("requests", "rejected", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "saved_tokens",
          "hits_exact", "hits_semantic")
MAX_DAYS = 366


class UsageReader:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis: Any = redis
        self._prefix = prefix

    async def aggregate(self, start: dt.date, end: dt.date, *, team: str | None = None, key: str | None = None,
                        model: str | None = None, group_by: Sequence[str] = ("day", "model")) -> dict[str, Any]:
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(f"{self._prefix}usage:{day:%Y%m%d}")
            docs: list[dict[bytes, bytes]] = await pipe.execute()
        groups: dict[tuple[str, ...], dict[str, int]] = {}
        for day, doc in zip(days, docs, strict=True):
            for raw_field, raw_value in doc.items():
                f_team, f_key, f_model, metric = raw_field.decode().rsplit("|", 3)
                if (team and f_team != team) or (key and f_key != key) or (model and f_model != model):
                    continue
                values = {"day": day.isoformat(), "team": f_team, "key": f_key, "model": f_model}
                group = tuple(values[g] for g in group_by)
                acc = groups.setdefault(group, {})
                acc[metric] = acc.get(metric, 0) + int(raw_value)
        rows = [{**dict(zip(group_by, g, strict=True)), **_row(acc)} for g, acc in sorted(groups.items())]
        total: dict[str, int] = {}
        for acc in groups.values():
            for metric, value in acc.items():
                total[metric] = total.get(metric, 0) + value
        return {"object": "usage", "start": start.isoformat(), "end": end.isoformat(), "group_by": list(group_by),
                "data": rows, "total": _row(total)}

    async def events(self, limit: int, *, team: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """The most recent events, newest first (scans at most 20 x limit events when filtering)."""
        scan = limit if team is None and key is None else limit * 20
        entries = await self._redis.xrevrange(f"{self._prefix}ledger", count=scan)
        out: list[dict[str, Any]] = []
        for _id, fields in entries:
            event = orjson.loads(fields[b"e"])
            if (team and event.get("team") != team) or (key and event.get("key") != key):
                continue
            out.append(event)
            if len(out) >= limit:
                break
        return out


def _row(acc: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {name: acc.get(name, 0) for name in COUNTS}
    row["cost_usd"] = acc.get("cost_nusd", 0) / 1e9
    row["saved_usd"] = acc.get("saved_nusd", 0) / 1e9
    row["avg_latency_ms"] = round(acc.get("latency_ms", 0) / row["requests"], 2) if row["requests"] else 0.0
    return row
