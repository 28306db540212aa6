# Everything runs from .venv, built from the pinned locks (runtime + dev). `make help` lists the
# targets.
SHELL := /bin/bash
PY := python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCKS := requirements.txt requirements-dev.txt
export LIFECYCLE_HOME ?= $(CURDIR)/.local
export AIRFLOW_HOME ?= $(CURDIR)/.local/airflow

.PHONY: help install demo test test-fast lint format bench airflow cluster preview lock clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): $(LOCKS) pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q "$$(grep '^uv==' requirements-dev.txt)"
	$(BIN)/uv pip sync --quiet --python $(BIN)/python $(LOCKS)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv from both locks (idempotent)

demo: $(STAMP) ## migrate, seed and run every campaign on the embedded default (SQLite, outbox)
	$(BIN)/python -m lifecycle.devtools.demo

test: $(STAMP) ## run the whole test suite (SQLite and PostgreSQL)
	$(BIN)/pytest -q

test-fast: $(STAMP) ## the suite without the tests marked slow (real airflow standalone, chromium)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP) ## ruff check + format check, mypy, import contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks and print figures for BENCHMARKS.md
	$(BIN)/python -m benchmarks.run

airflow: $(STAMP) ## airflow standalone on 127.0.0.1:8080 with this repo's DAGs (Ctrl-C stops it all)
	$(BIN)/python -m lifecycle.devtools.standalone

cluster: $(STAMP) ## Airflow on Celery: api-server, scheduler, dag-processor, 2 workers (Ctrl-C stops it)
	$(BIN)/python -m lifecycle.devtools.cluster --workers 2 --home $(LIFECYCLE_HOME)/airflow-cluster

preview: $(STAMP) ## render every template x locale into .local/preview/
	$(BIN)/lifecycle preview --all --out .local/preview

# The pinned uv in .venv if there is one (--group needs a recent uv), else uv from PATH.
UV = $(if $(wildcard $(BIN)/uv),$(BIN)/uv,uv)
lock: ## recompile requirements.txt (runtime) and requirements-dev.txt (dev group, within it)
	@test -x $(BIN)/uv || command -v uv >/dev/null 2>&1 || $(PY) -m pip install -q uv
	$(UV) pip compile pyproject.toml --python-version 3.11 \
	  --custom-compile-command "make lock" -o requirements.txt
	$(UV) pip compile --group pyproject.toml:dev -c requirements.txt --python-version 3.11 \
	  --custom-compile-command "make lock" -o requirements-dev.txt

clean: ## remove .local (warehouse, outbox, airflow home); keeps .venv
	rm -rf .local
