#!/usr/bin/env bash
# Regenerates the Python code of every proto under protos/ into weir/ (committed).
# `scripts/codegen.sh --check` fails when the committed code differs from what the protos generate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=weir
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mapfile -t protos < <(cd protos && find weir -name '*.proto' | sort)
find "$out" -path '*/v1/*_pb2*.py*' -delete 2>/dev/null || true
rm -rf .build-gen; mkdir -p .build-gen
"$PY" -m grpc_tools.protoc -I protos \
  --python_out=.build-gen --mypy_out=.build-gen --grpc_python_out=.build-gen --mypy_grpc_out=.build-gen \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" "${protos[@]}" 2> >(grep -v "^Writing mypy" >&2)
# protoc writes into .build-gen/weir/<svc>/v1/; copy into the target tree and add package markers.
(cd .build-gen/weir && find . -type f) | while read -r f; do
  mkdir -p "$out/$(dirname "$f")"
  cp ".build-gen/weir/$f" "$out/$f"
done
for d in $(cd .build-gen/weir && find . -mindepth 1 -type d); do touch "$out/$d/__init__.py"; done
rm -rf .build-gen
if [[ "${1:-}" == "--check" ]]; then
  status=0
  while read -r f; do
    if ! cmp -s "$out/$f" "weir/$f"; then echo "stale generated code: weir/$f (run: make proto)"; status=1; fi
  done < <(cd "$out" && find . -type f -name '*_pb2*')
  while read -r f; do
    [[ -e "$out/$f" ]] || { echo "generated file without a proto: weir/$f"; status=1; }
  done < <(cd weir && find . -path '*/v1/*_pb2*' -type f -name '*.py*')
  [[ $status == 0 ]] && echo "generated code is up to date"
  exit $status
fi
echo "generated $(find weir -path '*/v1/*_pb2*.py' | wc -l) modules from ${#protos[@]} protos"
