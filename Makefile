# Everything runs from .venv, built from the pinned lock. `make help` lists the targets.
SHELL := /bin/bash
PY := python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LIFECYCLE_HOME ?= $(CURDIR)/.local
export AIRFLOW_HOME ?= $(CURDIR)/.local/airflow

.PHONY: help install demo test lint format bench airflow preview lock clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv from the lock (idempotent)

demo: $(STAMP) ## migrate, seed and run every campaign on the embedded default (SQLite, outbox)
	$(BIN)/python -m lifecycle.devtools.demo

test: $(STAMP) ## run the whole test suite (SQLite and PostgreSQL)
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks and print figures for BENCHMARKS.md
	$(BIN)/python -m benchmarks.run

airflow: $(STAMP) ## airflow standalone on 127.0.0.1:8080 with this repo's DAGs (Ctrl-C stops it all)
	$(BIN)/python -m lifecycle.devtools.standalone

preview: $(STAMP) ## render every template x locale into .local/preview/
	$(BIN)/lifecycle preview --all --out .local/preview

lock: ## recompile requirements.txt from requirements.in
	@command -v uv >/dev/null 2>&1 || $(PY) -m pip install -q uv
	uv pip compile requirements.in --python-version 3.11 -o requirements.txt

clean: ## remove .local (warehouse, outbox, airflow home); keeps .venv
	rm -rf .local
