#!/usr/bin/env bash
# Makes this checkout runnable: a virtualenv with the project installed, and the exported embedding model.
# Idempotent and fast the second time (a stamp of pyproject.toml decides whether pip runs again).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "weir needs Python >= 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1
fi
[[ -x $VENV/bin/python ]] || { echo "==> creating virtualenv $VENV"; "$PYTHON" -m venv "$VENV"; }

# onnxruntime-gpu on hosts with an NVIDIA GPU, plain onnxruntime elsewhere.
runtime=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then runtime=gpu; fi
stamp=$VENV/.weir-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-$runtime"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "==> installing weir and its dependencies ($runtime runtime)"
  "$VENV/bin/pip" install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install --disable-pip-version-check -q -e ".[dev,$runtime]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import weir, grpc, onnxruntime, pymilvus, redis, aiohttp' \
    || { echo "dependency installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# Headless Chromium (and its driver) for the console's browser test, installed only when missing and root.
if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium and chromium-driver (for tests/gateway/test_console_browser.py)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
    || echo "warning: chromium could not be installed; the console browser test will fail" >&2
fi

# WordNet 3.0 (Debian wordnet-base): read only by two tests of tests/cache/test_verifier.py (the rebuild of
# services/cache/wordnet_synonyms.tsv, and the check that no synonym stems into another English word).
if [[ ! -f /usr/share/wordnet/data.noun ]] && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing wordnet-base (for tests/cache/test_verifier.py's WordNet tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q wordnet-base >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base >/dev/null 2>&1; } \
    || echo "warning: wordnet-base could not be installed; two WordNet tests will fail" >&2
fi

# The embedding model: exported once to the user's cache dir, shared by every checkout.
bash scripts/export-model.sh
