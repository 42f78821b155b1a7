"""`weir settings`: every environment variable Weir reads, from the settings classes themselves.

docs/settings.md is this command's output (`weir settings > docs/settings.md`); tests/kit/test_config.py fails
when it is stale, so the reference cannot drift from the code.
"""

from __future__ import annotations

from weir.fakellm.server import FakeLLMSettings
from weir.kit.clients import ClientSettings, Deadlines
from weir.kit.config import Setting, settings_of
from weir.kit.server import ServerSettings

INTRO = """\
# Settings

Every Weir process reads its configuration once, from environment variables, when it starts: a value that is
malformed or out of range stops the process with one line naming every problem, never a traceback. Telemetry
uses the standard `OTEL_*` variables ([telemetry.md](telemetry.md)); providers and models come from the
TOML file `WEIR_CONFIG` names ([config/weir.example.toml](../config/weir.example.toml)).

This page is generated from the settings classes: `weir settings > docs/settings.md`
(`tests/kit/test_config.py` fails when it is stale). `<cache>` is `$WEIR_CACHE_DIR`, or
`$XDG_CACHE_HOME/weir`, or `~/.cache/weir`. Secrets (keys, credentials, URLs that may carry a password) are
masked wherever settings are logged.
"""

#: Variables read outside a settings class: by `weir up`, the bootstrap and tools (variable, default, meaning).
OTHER: tuple[tuple[str, str, str], ...] = (
    ("WEIR_CONFIG", "config/fake.toml",
     "provider and model table (TOML; `${VAR}` and `${VAR:-default}` are replaced from the environment), read by "
     "the gateway, the router and the reasoner; unset, `weir up` also starts the simulated provider"),
    ("WEIR_STATE_DIR", "var", "local state: Milvus Lite files, the local Redis and Milvus server, logs, the "
     "generated master key"),
    ("WEIR_CACHE_DIR", "~/.cache/weir", "build artefacts shared between checkouts: exported models, the export "
     "virtualenv, routing embeddings"),
    ("WEIR_MILVUS_LOCAL", "server", "`weir up` without `WEIR_MILVUS_URI`: `server` starts the bundled Milvus "
     "standalone, `lite` gives the cache a Milvus Lite file"),
    ("WEIR_GATEWAY_PROCESSES", "1", "`weir up`: gateway processes sharing its ports (SO_REUSEPORT)"),
    ("WEIR_UVLOOP", "1", "0: the services run on asyncio's own event loop instead of uvloop"),
    ("WEIR_GATEWAY_URL", "http://127.0.0.1:8080", "`weir keys`, `teams`, `usage`: the gateway to talk to"),
    ("WEIR_API_KEY", "empty", "`weir keys`, `teams`, `usage`: the admin key to use (the master key)"),
    ("WEIR_ROUTING_DATA", "../shared/data/routing/mmlu_dev.jsonl",
     "router training and evaluation (`services/router/training`): the labelled routing data"),
)

def _sections() -> tuple[tuple[str, str, type], ...]:
    """(title, what it covers, settings class), in the order of the page."""
    # The services' settings are imported here: `weir` (the package) must not need them to load.
    from services.cache.settings import CacheSettings
    from services.embedder.settings import EmbedderSettings
    from services.gateway.settings import GatewaySettings
    from services.reasoner.settings import ReasonerSettings
    from services.router.settings import RouterSettings

    return (
        ("Every service", "how it listens, logs and stops (`weir.kit.server.ServerSettings`); each service's port "
         "has a variable of its own, below", ServerSettings),
        ("Calls between services", "the gateway, the cache and the reasoner (`weir.kit.clients.ClientSettings`)",
         ClientSettings),
        ("Gateway", "`services/gateway/settings.py`", GatewaySettings),
        ("Gateway: deadlines per hop", "seconds (`weir.kit.clients.Deadlines`)", Deadlines),
        ("Embedder", "`services/embedder/settings.py`", EmbedderSettings),
        ("Cache", "`services/cache/settings.py`", CacheSettings),
        ("Router", "`services/router/settings.py`", RouterSettings),
        ("Reasoner", "`services/reasoner/settings.py`", ReasonerSettings),
        ("Simulated provider (`weir fake-llm`)", "`weir/fakellm/server.py`", FakeLLMSettings),
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[Setting]) -> list[str]:
    out = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{r.env}` | {r.type} | `{_cell(r.default)}` | {_cell(r.help) or '—'} |" for r in rows]
    return out


def render() -> str:
    lines = [INTRO]
    for title, about, cls in _sections():
        lines += [f"## {title}", "", f"{about[0].upper()}{about[1:]}.", "", *_table(settings_of(cls)), ""]
    lines += ["## Read by `weir up` and the tools", "", "| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | `{default}` | {_cell(meaning)} |" for name, default, meaning in OTHER]
    return "\n".join(lines) + "\n"


def main() -> int:
    print(render(), end="")
    return 0
