"""`weir keys`, `weir teams` and `weir usage`: the gateway's admin and usage API from the command line.

    weir keys create --team research --rpm 600 --tpm 100000 --budget-usd 50 --period month --models gpt-4o-mini,auto
    weir keys list [--team T] | get ID | update ID [--rpm N ...] | revoke ID | rotate ID [--grace-s N]
    weir teams set research --tpm 200000 --budget-usd 500 | list | get research
    weir usage [--start YYYY-MM-DD] [--end ...] [--team T] [--key ID] [--model M] [--by day,model]

The gateway is WEIR_GATEWAY_URL (default http://127.0.0.1:8080); the admin key is --admin-key or
WEIR_MASTER_KEY (`weir usage` also takes a team key, which sees only its own usage). --json prints the raw
answer. A new or rotated secret is printed once; it cannot be shown again.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8080"
_LIMITS = ("rpm", "tpm", "budget_usd", "period", "models", "name")


class CliError(Exception):
    """An answer that is not a success, with the gateway's message."""


def add_parsers(sub: Any) -> None:
    """Adds `keys`, `teams` and `usage` to the `weir` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("WEIR_GATEWAY_URL", DEFAULT_URL), help="gateway base URL")
    common.add_argument("--admin-key", default=os.environ.get("WEIR_MASTER_KEY", ""),
                        help="admin key (default: WEIR_MASTER_KEY)")
    common.add_argument("--json", action="store_true", help="print the raw JSON answer")

    def limits(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rpm", type=int, help="requests per minute (0: no limit)")
        p.add_argument("--tpm", type=int, help="tokens per minute (0: no limit)")
        p.add_argument("--budget-usd", type=float, help="budget in USD per period (0: none)")
        p.add_argument("--period", choices=("day", "month"), help="budget period (default month)")

    p_keys = sub.add_parser("keys", help="create, list, revoke and rotate API keys")
    keys = p_keys.add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="create a key (its secret is shown once)")
    p.add_argument("--team", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--models", default="", help="comma-separated model ids the key may use (default: any)")
    p.add_argument("--admin", action="store_true", help="the key may use the admin API")
    limits(p)
    p = keys.add_parser("list", parents=[common], help="list keys")
    p.add_argument("--team")
    for name, text in (("get", "show a key and its spend"), ("revoke", "revoke a key at once")):
        keys.add_parser(name, parents=[common], help=text).add_argument("key_id")
    p = keys.add_parser("update", parents=[common], help="change a key's limits, models or name")
    p.add_argument("key_id")
    p.add_argument("--name")
    p.add_argument("--models", help="comma-separated model ids ('' for any)")
    limits(p)
    p = keys.add_parser("rotate", parents=[common], help="a new secret for the same key id")
    p.add_argument("key_id")
    p.add_argument("--grace-s", type=int, default=0, help="seconds the old secret keeps working (default 0)")

    p_teams = sub.add_parser("teams", help="team-wide limits and budgets")
    teams = p_teams.add_subparsers(dest="teams_command", required=True)
    p = teams.add_parser("set", parents=[common], help="set a team's limits and budget")
    p.add_argument("team")
    limits(p)
    teams.add_parser("list", parents=[common], help="list teams")
    teams.add_parser("get", parents=[common], help="show a team and its spend").add_argument("team")

    p = sub.add_parser("usage", parents=[common], help="usage and cost from the ledger, as a table")
    p.add_argument("--api-key", default=os.environ.get("WEIR_API_KEY", ""),
                   help="a team key (sees only its own usage); default: the admin key")
    p.add_argument("--start", help="first day, YYYY-MM-DD (default: 29 days before --end)")
    p.add_argument("--end", help="last day, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--team")
    p.add_argument("--key")
    p.add_argument("--model")
    p.add_argument("--by", default="day,model", help="group by: comma-separated of day, team, key, model")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          query: dict[str, str] | None = None, key: str = "") -> Any:
    key = key or args.admin_key
    if not key:
        raise CliError("no key: pass --admin-key or set WEIR_MASTER_KEY")
    url = args.url.rstrip("/") + path
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = exc.reason
        raise CliError(f"HTTP {exc.code}: {message}") from exc
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the gateway at {args.url}: {exc.reason}") from exc


def _limits_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in _LIMITS:
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if isinstance(body.get("models"), str):
        body["models"] = [m.strip() for m in body["models"].split(",") if m.strip()]
    return body


def _money(value: float) -> str:
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value else "-"


def _keys_table(console: Console, keys: list[dict[str, Any]]) -> None:
    table = Table(title="API keys")
    for col in ("id", "team", "name", "models", "rpm", "tpm", "budget", "state", "hint"):
        table.add_column(col, justify="right" if col in ("rpm", "tpm", "budget") else "left")
    for k in keys:
        budget = f"{_money(k['budget_usd'])}/{k['period']}" if k["budget_usd"] else "-"
        state = "revoked" if k["revoked"] else ("admin" if k["admin"] else "active")
        table.add_row(k["id"], k["team"], k["name"], ",".join(k["models"]) or "any", str(k["rpm"] or "-"),
                      str(k["tpm"] or "-"), budget, state, k["hint"])
    console.print(table)


def _usage_table(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title=f"Usage {doc['start']} .. {doc['end']}")
    groups = doc["group_by"]
    for g in groups:
        table.add_column(g)
    for col in ("requests", "rejected", "tokens in", "tokens out", "cost", "cache hits", "saved tokens", "saved",
                "avg ms"):
        table.add_column(col, justify="right")

    def cells(row: dict[str, Any]) -> list[str]:
        return [str(row["requests"]), str(row["rejected"]), f"{row['prompt_tokens']:,}",
                f"{row['completion_tokens']:,}", _money(row["cost_usd"]),
                str(row["hits_exact"] + row["hits_semantic"]), f"{row['saved_tokens']:,}", _money(row["saved_usd"]),
                f"{row['avg_latency_ms']:.1f}"]

    for row in doc["data"]:
        table.add_row(*[str(row[g]) for g in groups], *cells(row))
    table.add_section()
    table.add_row("total", *[""] * (len(groups) - 1), *cells(doc["total"]))
    console.print(table)


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return _run(args, console)
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        return 1


def _run(args: argparse.Namespace, console: Console) -> int:
    doc: Any
    if args.command == "usage":
        doc = _call(args, "GET", "/v1/usage", key=args.api_key, query={
            "start": args.start, "end": args.end, "team": args.team, "key": args.key, "model": args.model,
            "group_by": args.by})
        if args.json:
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _usage_table(console, doc)
        return 0
    if args.command == "teams":
        if args.teams_command == "set":
            doc = _call(args, "PUT", f"/v1/admin/teams/{args.team}", _limits_body(args))
        elif args.teams_command == "get":
            doc = _call(args, "GET", f"/v1/admin/teams/{args.team}")
        else:
            doc = _call(args, "GET", "/v1/admin/teams")
        if args.json:
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        rows = doc.get("data", [doc])
        table = Table(title="Teams")
        for col in ("team", "rpm", "tpm", "budget", "spend this period"):
            table.add_column(col)
        for t in rows:
            table.add_row(t["team"], str(t["rpm"] or "-"), str(t["tpm"] or "-"),
                          f"{_money(t['budget_usd'])}/{t['period']}" if t["budget_usd"] else "-",
                          _money(t["spend_usd"]) if "spend_usd" in t else "")
        console.print(table)
        return 0
    cmd = args.keys_command
    if cmd == "create":
        body = {"team": args.team, "name": args.name, **_limits_body(args)}
        if args.admin:
            body["admin"] = True
        doc = _call(args, "POST", "/v1/admin/keys", body)
    elif cmd == "list":
        doc = _call(args, "GET", "/v1/admin/keys", query={"team": args.team or ""})
    elif cmd == "get":
        doc = _call(args, "GET", f"/v1/admin/keys/{args.key_id}")
    elif cmd == "update":
        doc = _call(args, "PATCH", f"/v1/admin/keys/{args.key_id}", _limits_body(args))
    elif cmd == "revoke":
        doc = _call(args, "POST", f"/v1/admin/keys/{args.key_id}/revoke")
    else:
        doc = _call(args, "POST", f"/v1/admin/keys/{args.key_id}/rotate", {"grace_s": args.grace_s})
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    _keys_table(console, doc["data"] if cmd == "list" else [doc])
    if "key" in doc:
        console.print(f"API key (shown once, store it now): [bold]{doc['key']}[/]", soft_wrap=True)
    if "spend_usd" in doc:
        console.print(f"spend this {doc['period']}: {_money(doc['spend_usd']) if doc['spend_usd'] else '$0'}")
    return 0
