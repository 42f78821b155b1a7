# Weir developer commands. `make up` and `make test` bootstrap what they need (see scripts/bootstrap.sh).
.PHONY: up test check lint proto proto-check deploy-check model judge fuzz bench bench-soak profile bootstrap clean

VENV := .venv
PY := $(VENV)/bin/python

bootstrap:
	@bash scripts/bootstrap.sh

## Start the whole mesh on embedded defaults (local Milvus Lite, local or existing Redis, bundled model).
up: bootstrap
	@$(VENV)/bin/weir up

## Run the test suite (what CI runs).
test: bootstrap check
	@$(VENV)/bin/pytest

## Static checks: generated code up to date, lint, types.
check: proto-check lint deploy-check

deploy-check:
	@bash scripts/validate-deploy.sh

lint:
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy weir services bench tests

proto:
	@bash scripts/codegen.sh

proto-check:
	@bash scripts/codegen.sh --check

model:
	@bash scripts/export-model.sh

## Retrain the paraphrase judge's adapter from services/cache/eval/pairs.jsonl (~10 min on 2 cores), then export it.
judge: bootstrap
	@bash scripts/export-model.sh >/dev/null  # builds the export venv when missing
	@PYTHONPATH=. "$$($(PY) -c 'from weir.kit.config import cache_home; print(cache_home())')/export-venv/bin/python" \
		-m weir.model.judge_train
	@bash scripts/export-model.sh

## A longer run of the fuzzing test (the suite runs 250 cases per surface; FUZZ_CASES, FUZZ_SEED to vary).
fuzz: bootstrap
	@WEIR_FUZZ_CASES=$${FUZZ_CASES:-5000} WEIR_FUZZ_SEED=$${FUZZ_SEED:-$$(date +%s)} \
		$(VENV)/bin/pytest tests/integration/test_fuzz.py -q

## Benchmarks (not part of `make test`).
bench: bootstrap
	@$(PY) -m bench.mesh_bench

bench-embedder: bootstrap
	@$(PY) -m bench.embedder_bench

bench-cache: bootstrap
	@$(PY) -m bench.cache_bench

bench-router: bootstrap
	@$(PY) -m bench.router_bench

## 30 minutes of mixed load; RSS of every process must stay flat (<= 5% growth).
bench-soak: bootstrap
	@$(PY) -m bench.soak --minutes 30

## Where each service spends its CPU under load (py-spy; `pip install py-spy` into the venv first).
profile: bootstrap
	@$(PY) -m bench.profile_mesh

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
