"""The provider and model table (a TOML file), read by the router, the reasoner and the gateway.

See config/weir.example.toml for every key. `${VAR}` in string values is replaced from the environment.
WEIR_CONFIG names the file; without it the mesh uses config/fake.toml, the simulated provider.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from weir.kit.config import REPO_ROOT, ConfigError

FAKE_CONFIG = REPO_ROOT / "config" / "fake.toml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Provider:
    """An upstream API: any OpenAI-compatible endpoint, or Anthropic's Messages API."""

    name: str
    kind: str  # "openai" | "anthropic"
    base_url: str
    api_key_envs: tuple[str, ...] = ()
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0
    total_timeout_s: float = 300.0
    max_connections: int = 100

    def api_keys(self) -> list[str]:
        """The configured keys that are set, in rotation order (values are never logged)."""
        return [os.environ[e] for e in self.api_key_envs if os.environ.get(e)]


@dataclass(frozen=True)
class Model:
    """A concrete model a client may name."""

    id: str
    provider: str
    upstream_model: str
    tier: str = "weak"  # "weak" | "strong"
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    cached_input_usd_per_mtok: float = 0.0
    context_window: int = 8192
    rpm: int = 0  # per-deployment limits the router can see; 0 = unlimited
    tpm: int = 0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        fresh = max(0, prompt_tokens - cached_tokens)
        return (
            fresh * self.input_usd_per_mtok
            + cached_tokens * self.cached_input_usd_per_mtok
            + completion_tokens * self.output_usd_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class VirtualModel:
    """A model id the router resolves per request, e.g. "auto"."""

    id: str
    strong: str
    weak: str
    threshold: float = 0.5
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    providers: dict[str, Provider]
    models: dict[str, Model]
    virtual_models: dict[str, VirtualModel] = field(default_factory=dict)
    source: str = ""

    @property
    def simulated(self) -> bool:
        return any(p.base_url.startswith("http://127.0.0.1") and p.name == "fake" for p in self.providers.values())


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"config refers to ${{{name}}}, which is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _typed(value: Any, typ: Any, where: str) -> Any:
    """`value` as the field type `typ` (str, int, float, tuple[str, ...]); ConfigError naming `where` otherwise."""
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if typ in (int, str) and isinstance(value, typ) and not isinstance(value, bool):
        return value
    if typing.get_origin(typ) is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    shown = {float: "a number", int: "an integer", str: "a string"}.get(typ, "a list of strings")
    raise ConfigError(f"{where}: must be {shown}, got {value!r}")


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(hints)})")
    try:
        obj = cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in raw.items()})
    except TypeError as exc:  # a required key missing
        raise ConfigError(f"{where}: {exc}") from exc
    for name in hints:
        value = getattr(obj, name)
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0, got {value!r}")
    return obj


def _tables(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be an array of tables ([[{key}]]), got {value!r}")
    return value


def parse(doc: dict[str, Any], source: str = "") -> MeshConfig:
    doc = _expand(doc)
    providers: dict[str, Provider] = {}
    for i, raw in enumerate(_tables(doc, "providers")):
        if isinstance(raw, dict) and "api_key_env" in raw:
            raw = dict(raw)
            env = raw.pop("api_key_env")
            raw["api_key_envs"] = [env] if isinstance(env, str) else env
        p = _build(Provider, raw, f"providers[{i}]")
        if p.kind not in ("openai", "anthropic"):
            raise ConfigError(f"providers[{i}] ({p.name}): kind must be 'openai' or 'anthropic', not {p.kind!r}")
        if urlsplit(p.base_url).scheme not in ("http", "https") or not urlsplit(p.base_url).netloc:
            raise ConfigError(f"providers[{i}] ({p.name}): base_url must be an http(s) URL, got {p.base_url!r}")
        if min(p.connect_timeout_s, p.first_token_timeout_s, p.total_timeout_s, p.max_connections) <= 0:
            raise ConfigError(f"providers[{i}] ({p.name}): timeouts and max_connections must be > 0")
        providers[p.name] = p
    models: dict[str, Model] = {}
    for i, raw in enumerate(_tables(doc, "models")):
        if isinstance(raw, dict):
            raw = {"upstream_model": raw.get("id", ""), **raw}
        m = _build(Model, raw, f"models[{i}]")
        if m.provider not in providers:
            raise ConfigError(f"models[{i}] ({m.id}): unknown provider {m.provider!r}")
        if m.tier not in ("weak", "strong"):
            raise ConfigError(f"models[{i}] ({m.id}): tier must be 'weak' or 'strong'")
        if m.context_window <= 0:
            raise ConfigError(f"models[{i}] ({m.id}): context_window must be > 0")
        models[m.id] = m
    virtual: dict[str, VirtualModel] = {}
    for i, raw in enumerate(_tables(doc, "virtual_models")):
        v = _build(VirtualModel, raw, f"virtual_models[{i}]")
        if not 0.0 <= v.threshold <= 1.0:
            raise ConfigError(f"virtual_models[{i}] ({v.id}): threshold must be in [0, 1], got {v.threshold}")
        for ref in (v.strong, v.weak, *v.fallbacks):
            if ref not in models:
                raise ConfigError(f"virtual_models[{i}] ({v.id}): unknown model {ref!r}")
        if v.id in models:
            raise ConfigError(f"virtual_models[{i}]: {v.id!r} is also a concrete model")
        virtual[v.id] = v
    if not models:
        raise ConfigError(f"{source or 'config'}: no models configured")
    return MeshConfig(providers=providers, models=models, virtual_models=virtual, source=source)


def config_path() -> Path:
    return Path(os.environ.get("WEIR_CONFIG") or FAKE_CONFIG)


def load_mesh_config(path: Path | None = None) -> MeshConfig:
    path = path or config_path()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"WEIR_CONFIG: no such file {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse(doc, str(path))
