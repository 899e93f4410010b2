# Cadenza — every command sets itself up first (venv at .venv, system packages via apt-get).
SHELL := /bin/bash
BIN := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench serve clean

.venv/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: .venv/.setup-done

## The main job on the embedded default: Bach chorales → REMI → transformer → continuations.
demo: setup
	$(BIN)/cadenza demo --output demo-output

## The whole test suite (unit, API, worker, integration on SQLite and on PostgreSQL+Redis+S3).
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff format --check shared services tests bench
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy shared/cadenza

bench: setup
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python bench/api_latency.py
	$(BIN)/python bench/api_load.py --backends embedded,postgres
	$(BIN)/python bench/tokenization.py
	$(BIN)/python bench/train.py --quick
	$(BIN)/python bench/sample.py --quick
	$(BIN)/python bench/audio.py

serve: setup
	$(BIN)/cadenza serve

clean:
	rm -rf .cadenza demo-output .pytest_cache .mypy_cache .ruff_cache
