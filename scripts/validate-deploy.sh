#!/usr/bin/env bash
# Validates deploy/ offline: YAML lint, kustomize renders every overlay, the rendered objects against the
# Kubernetes schemas (strict), KEDA objects against deploy/kubernetes/schemas, and the compose file against
# the compose specification.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
command -v kubectl >/dev/null || { echo "validate-deploy: kubectl is needed (Debian: kubernetes-client)" >&2; exit 1; }

$BIN/yamllint -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable,
  braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}, truthy: {check-keys: false},
  comments: {min-spaces-from-content: 1}}}' deploy
for overlay in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  report=$($BIN/kubernetes-validate --strict --no-warn "$out/$name.yaml" 2>&1 || true)
  if grep -qE '^(ERROR|FAIL)' <<<"$report"; then echo "$report" | grep -E '^(ERROR|FAIL)'; exit 1; fi
  # Objects the Kubernetes schemas do not know (CRDs) are checked against our own schemas.
  $BIN/python - "$out/$name.yaml" "$out" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keda = [d for d in docs if d.get("apiVersion", "").startswith("keda.sh/")]
for i, d in enumerate(keda):
    json.dump(d, open(f"{sys.argv[2]}/keda-{i}.json", "w"))
print(f"  {sys.argv[1].rsplit('/', 1)[1]}: {len(docs)} objects rendered, {len(keda)} KEDA")
PY
  for f in "$out"/keda-*.json; do
    [[ -e $f ]] || continue
    $BIN/check-jsonschema -q --schemafile deploy/kubernetes/schemas/keda-scaledobject.json "$f"
    rm "$f"
  done
done
$BIN/check-jsonschema -q --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
echo "deploy/ is valid"
