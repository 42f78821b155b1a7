"""Typed, fail-fast settings read once from the environment.

A settings class is a frozen dataclass whose fields name their environment variable::

    @dataclass(frozen=True)
    class EmbedderSettings:
        port: int = env("WEIR_EMBEDDER_PORT", 50051)
        model_dir: Path = env("WEIR_EMBEDDER_MODEL_DIR", default_model_dir())

    settings = load(EmbedderSettings)

`load` reads every field, converts it by its annotation and raises one `ConfigError` that lists every
bad variable, so a misconfigured service stops at start-up with a message naming what to fix.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NewType, TypeVar

T = TypeVar("T")
#: The checkout Weir runs from (config/, services/, scripts/ live there).
REPO_ROOT = Path(__file__).resolve().parents[2]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """One or more environment variables are missing or malformed."""


def env(name: str, default: Any = dataclasses.MISSING, *, secret: bool = False, help: str = "") -> Any:
    """Declares a settings field read from the environment variable `name`."""
    meta = {"env": name, "secret": secret, "help": help}
    if default is dataclasses.MISSING:  # required: keyword-only so it may follow defaulted fields
        return dataclasses.field(metadata=meta, kw_only=True)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


Port = NewType("Port", int)
"""A TCP port: a settings field of this type takes 0 (any free port) to 65535 and refuses anything else."""


def _convert(raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0])
    if typ is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    if typ is Port:
        port = int(raw)
        if not 0 <= port <= 65535:
            raise ValueError(f"a port is 0 (any free port) to 65535, got {port}")
        return port
    if typ is int:
        return int(raw)
    if typ is float:
        return float(raw)
    if typ is Path:
        return Path(raw).expanduser()
    if typ is str:
        return raw
    if origin is tuple:
        (inner, *_rest) = typing.get_args(typ)
        return tuple(_convert(p.strip(), inner) for p in raw.split(",") if p.strip())
    raise TypeError(f"unsupported settings type {typ!r}")


def load(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds `cls` from the environment; keyword overrides win. Raises ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        name = f.metadata.get("env")
        if name is None or name not in environ:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{name or f.name}: required but not set")
            continue
        try:
            values[f.name] = _convert(environ[name], hints[f.name])
        except (ValueError, TypeError) as exc:
            shown = "<secret>" if f.metadata.get("secret") else repr(environ[name])
            errors.append(f"{name}={shown}: {exc}")
    if errors:
        raise ConfigError(f"invalid configuration for {cls.__name__}: " + "; ".join(errors))
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        problems = validate()
        if problems:
            raise ConfigError(f"invalid configuration for {cls.__name__}: " + "; ".join(problems))
    return obj


def load_or_exit(cls: type[T], process: str, **overrides: Any) -> T:
    """`load` for a process' entry point: a configuration error ends the process with one line on stderr naming
    every problem (exit status 1), not a traceback."""
    try:
        return load(cls, **overrides)
    except ConfigError as exc:
        sys.exit(f"{process}: {exc}")


def describe(obj: Any) -> dict[str, Any]:
    """Settings as a dict for logging, secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("secret") and value:
            value = "***"
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


@dataclasses.dataclass(frozen=True)
class Setting:
    """One environment variable of a settings class, for a reference (`weir settings`)."""

    env: str
    type: str
    default: str
    help: str


def settings_of(cls: type) -> list[Setting]:
    """The environment variables `cls` reads, in field order (nested settings objects are not expanded)."""
    hints = typing.get_type_hints(cls)
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        name = f.metadata.get("env")
        if name is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = _shown(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _shown(f.default_factory())
        else:
            default = "required"
        out.append(Setting(name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out


def _type_name(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        (inner, *_rest) = [a for a in typing.get_args(typ) if a is not type(None)]
        return f"{_type_name(inner)}, or empty for unset"
    if origin is tuple:
        return f"comma-separated {_type_name(typing.get_args(typ)[0])}s"
    return {Port: "port", bool: "boolean", int: "integer", float: "number", Path: "path", str: "text"}.get(
        typ, getattr(typ, "__name__", str(typ)))


def _shown(value: Any) -> str:
    """A default as a person would write it: paths under the machine's cache home read `<cache>/...`, paths in
    this checkout are relative to it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ", ".join(_shown(v) for v in value) if value else "empty"
    if isinstance(value, Path):
        for root, shown in ((REPO_ROOT, ""), (cache_home(), "<cache>/")):
            if value.is_relative_to(root):
                return shown + str(value.relative_to(root))
        return str(value)
    if isinstance(value, str):
        return value if value else "empty"
    return str(value)


def state_dir() -> Path:
    """Where Weir keeps local state (Milvus Lite files, local Redis): $WEIR_STATE_DIR or ./var."""
    return Path(os.environ.get("WEIR_STATE_DIR", "var")).expanduser()


def cache_home() -> Path:
    """Where Weir keeps build artefacts shared between checkouts (exported models): $WEIR_CACHE_DIR."""
    base = os.environ.get("WEIR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "weir"
    )
    return Path(base)


def default_model_dir() -> Path:
    """The exported bundled model: $WEIR_EMBEDDER_MODEL_DIR or <cache>/models/all-minilm-l6-v2."""
    return cache_home() / "models" / "all-minilm-l6-v2"


def default_judge_dir() -> Path:
    """The exported paraphrase judge (weir.model.judge_export): <cache>/models/weir-judge."""
    return cache_home() / "models" / "weir-judge"
