from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weir.cli import settings as settings_cli
from weir.kit.config import ConfigError, Port, describe, env, load, settings_of
from weir.mesh_config import parse


@dataclass(frozen=True)
class Sample:
    port: Port = env("T_PORT", 5000)
    ratio: float = env("T_RATIO", 0.5)
    on: bool = env("T_ON", False)
    path: Path | None = env("T_PATH", None)
    names: tuple[str, ...] = env("T_NAMES", ())
    token: str = env("T_TOKEN", secret=True)


def test_reads_and_converts_by_annotation() -> None:
    s = load(Sample, {"T_PORT": "7", "T_RATIO": "1.5", "T_ON": "yes", "T_PATH": "/tmp/x", "T_NAMES": "a, b,",
                      "T_TOKEN": "s3cret"})
    assert (s.port, s.ratio, s.on, s.path, s.names) == (7, 1.5, True, Path("/tmp/x"), ("a", "b"))
    assert describe(s)["token"] == "***"


def test_lists_every_problem_at_once_and_hides_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        load(Sample, {"T_PORT": "seven", "T_ON": "maybe"})
    msg = str(info.value)
    assert "T_PORT='seven'" in msg and "T_ON='maybe'" in msg and "T_TOKEN: required" in msg
    with pytest.raises(ConfigError) as info:
        load(Sample, {"T_TOKEN": "x", "T_RATIO": "nope-secret"})
    assert "T_RATIO" in str(info.value)


def test_a_port_outside_0_to_65535_is_refused_not_wrapped() -> None:
    """gRPC took 99999 as 34463 (99999 - 65536) and served there."""
    assert load(Sample, {"T_PORT": "0", "T_TOKEN": "x"}).port == 0
    assert load(Sample, {"T_PORT": "65535", "T_TOKEN": "x"}).port == 65535
    for bad in ("99999", "-1", "65536"):
        with pytest.raises(ConfigError, match=f"T_PORT='{bad}': a port is 0 \\(any free port\\) to 65535"):
            load(Sample, {"T_PORT": bad, "T_TOKEN": "x"})


@pytest.mark.parametrize("module", ["services.cache", "services.router", "services.reasoner", "services.embedder",
                                    "services.gateway", "services.gateway.worker"])
def test_a_service_with_a_bad_setting_exits_with_one_line_naming_it(module: str) -> None:
    env_vars = {**os.environ, "WEIR_METRICS_PORT": "99999", "WEIR_MASTER_KEY": "k"}
    out = subprocess.run([sys.executable, "-m", module], env=env_vars, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith("WEIR_METRICS_PORT='99999': a port is 0 (any free port) "
                                                        "to 65535, got 99999"), out.stderr


def test_mesh_config_validation() -> None:
    base = {"providers": [{"name": "p", "kind": "openai", "base_url": "http://x"}],
            "models": [{"id": "m", "provider": "p"}]}
    cfg = parse(base)
    assert cfg.models["m"].upstream_model == "m"
    with pytest.raises(ConfigError, match="unknown provider"):
        parse({**base, "models": [{"id": "m", "provider": "nope"}]})
    with pytest.raises(ConfigError, match="unknown keys"):
        parse({**base, "models": [{"id": "m", "provider": "p", "prise": 1}]})
    with pytest.raises(ConfigError, match="unknown model"):
        parse({**base, "virtual_models": [{"id": "auto", "strong": "m", "weak": "zz"}]})
    with pytest.raises(ConfigError, match="not set"):
        parse({**base, "providers": [{"name": "p", "kind": "openai", "base_url": "${WEIR_SURELY_UNSET_VAR}"}]})


@pytest.mark.parametrize(("change", "message"), [
    ({"models": True}, "models: must be an array of tables"),
    ({"providers": [None]}, r"providers\[0\]: must be a table"),
    ({"models": [{"id": "m", "provider": "p", "context_window": "8k"}]},
     r"models\[0\].context_window: must be an integer"),
    ({"models": [{"id": "m", "provider": "p", "input_usd_per_mtok": -1.5}]}, r"input_usd_per_mtok: must be >= 0"),
    ({"models": [{"id": "m", "provider": "p", "output_usd_per_mtok": float("nan")}]}, "must be a finite number"),
    ({"models": [{"id": "m", "provider": {"p": 1}}]}, r"models\[0\].provider: must be a string"),
    ({"models": [{"id": "m", "provider": "p", "context_window": 0}]}, "context_window must be > 0"),
    ({"providers": [{"name": "p", "kind": "openai", "base_url": "localhost:8000"}]}, "base_url must be an http"),
    ({"providers": [{"name": "p", "kind": "openai", "base_url": "http://x", "total_timeout_s": 0}]}, "timeouts"),
    ({"providers": [{"name": "p", "kind": "openai", "base_url": "http://x", "api_key_env": 7}]},
     "api_key_envs: must be a list of strings"),
    ({"virtual_models": [{"id": "auto", "strong": "m", "weak": "m", "threshold": 1.5}]},
     r"threshold must be in \[0, 1\]"),
])
def test_mesh_config_refuses_wrong_types_and_ranges_by_name(change: dict[str, Any], message: str) -> None:
    """Found by fuzzing: wrong types surfaced as TypeError / ValueError from deep inside, or were accepted."""
    base = {"providers": [{"name": "p", "kind": "openai", "base_url": "http://x"}],
            "models": [{"id": "m", "provider": "p"}]}
    with pytest.raises(ConfigError, match=message):
        parse({**base, **change})


def test_price_math() -> None:
    cfg = parse({"providers": [{"name": "p", "kind": "openai", "base_url": "http://x"}],
                 "models": [{"id": "m", "provider": "p", "input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0,
                             "cached_input_usd_per_mtok": 1.0}]})
    assert cfg.models["m"].cost_usd(1_000_000, 500_000, cached_tokens=500_000) == pytest.approx(1.0 + 0.5 + 4.0)


@dataclass(frozen=True)
class _Documented:
    port: Port = env("WEIR_DOC_PORT", 8080, help="where it listens")
    models: Path = env("WEIR_DOC_DIR", Path.home() / "models")
    key: str = env("WEIR_DOC_KEY", secret=True, help="a secret")
    names: tuple[str, ...] = env("WEIR_DOC_NAMES", ())
    extra: float | None = env("WEIR_DOC_EXTRA", None)
    shipped: Path = env("WEIR_DOC_SHIPPED", Path(__file__).resolve())


def test_settings_of_lists_each_variable_with_its_type_and_default() -> None:
    rows = {r.env: (r.type, r.default, r.help) for r in settings_of(_Documented)}
    assert rows == {
        "WEIR_DOC_PORT": ("port", "8080", "where it listens"),
        "WEIR_DOC_DIR": ("path", str(Path.home() / "models"), ""),
        "WEIR_DOC_KEY": ("text", "required", "a secret"),
        "WEIR_DOC_NAMES": ("comma-separated texts", "empty", ""),
        "WEIR_DOC_EXTRA": ("number, or empty for unset", "unset", ""),
        "WEIR_DOC_SHIPPED": ("path", "tests/kit/test_config.py", ""),  # in the checkout: relative to it
    }


def test_docs_settings_md_is_what_weir_settings_prints() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    assert doc.read_text() == settings_cli.render(), (
        "docs/settings.md is stale: run `.venv/bin/weir settings > docs/settings.md`")


def test_every_variable_the_code_reads_is_in_the_reference() -> None:
    """Every WEIR_* name in the services' and the kit's code is documented, with a meaning."""
    root = Path(__file__).resolve().parents[2]
    #: Set by a launcher for its children, never by a person.
    internal = {"WEIR_STOP_WITH_PARENT", "WEIR_FAKE_LLM_URL"}
    reference = settings_cli.render()
    named: set[str] = set()
    for folder in ("weir", "services"):
        for path in (root / folder).rglob("*.py"):
            if "_pb2" not in path.name:
                named |= set(re.findall(r"[\"'](WEIR_[A-Z0-9_]+)[\"']", path.read_text()))
    missing = sorted(n for n in named - internal if f"`{n}`" not in reference)
    assert not missing, f"not in docs/settings.md: {missing}"
    assert "| — |" not in reference, "a variable without a meaning: give its env() a help text"
