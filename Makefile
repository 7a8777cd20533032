# Two commands do all set-up on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
# uv from PATH, else bootstrapped with pip and run as a module (no PATH assumptions on a fresh machine).
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export MLFLOW_ENABLE_TELEMETRY ?= false
export DO_NOT_TRACK ?= true
# OpenMP threads (XGBoost's) sleep rather than spin while they wait: on a machine shared with servers and other
# jobs, spinning threads made training 2-3x slower (bench/overhead.py).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test test-fast lint bench docs clean

# pytest workers for `make test` (pytest-xdist): one per core of this 2-core machine; the files that start servers
# and processes of their own run one after the other on one worker, the rest beside them (tests/conftest.py).
WORKERS ?= 2

# The environment follows the committed uv.lock exactly (`--locked` fails if it is out of date). Bytecode is
# compiled once here: where PYTHONDONTWRITEBYTECODE is set (CI), every process would otherwise compile
# MLflow, Prefect and pandas from source again (about 8 s of CPU each).
install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked --quiet --compile-bytecode

run: install  ## the fraud pipeline end to end on embedded defaults (simulated data, SQLite MLflow, local Prefect)
	$(UV) run mlops run fraud $(ARGS)

test: install  ## lint, the docs build (strict), the layering (import-linter), then every test
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(UV) run mkdocs build --strict --site-dir site
	$(UV) run lint-imports
	$(UV) run pytest -q -n $(WORKERS) --no-loadscope-reorder

test-fast: install  ## the unit tests only (no servers, no flows): the inner loop
	$(UV) run pytest -q tests/unit

lint: install
	$(UV) run ruff check --fix .
	$(UV) run ruff format .
	$(UV) run lint-imports

bench: install  ## figures: wall clock as a user sees it, fraud and stock pipelines, monitoring
	$(UV) run python bench/wall_clock.py
	$(UV) run python bench/pipeline.py
	$(UV) run python bench/stock.py
	$(UV) run python bench/monitoring.py

docs: install  ## the docs site on http://127.0.0.1:8000 (MkDocs), rebuilt on every change; `make test` builds it
	NO_MKDOCS_2_WARNING=1 $(UV) run mkdocs serve

clean:
	rm -rf .mlops .venv

# Server mode without Docker (README "Run on servers"): MLflow and Prefect servers on loopback against the local
# Postgres, with the settings docker-compose.yml uses, plus `mlops serve`. State: .mlops/servers/.
.PHONY: up down

up: install  ## start MLflow + Prefect servers, Redis and `mlops serve` (DASK=1: a Dask cluster too); idempotent
	$(UV) run python -m infra.servers up $(if $(filter 1,$(DASK)),--dask) $(ARGS)

down: install  ## stop what `make up` started and the local Prefect server; ARGS=--purge also drops databases
	$(UV) run python -m infra.servers down $(ARGS)
	$(UV) run mlops server stop
