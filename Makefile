# outreach-sync — `make run` for the demo, `make test` for the suite. Both set up everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export REDIS_URL ?= redis://127.0.0.1:6379/0
# Test processes (pytest-xdist). More than the cores on purpose: most of the suite's time is
# spent waiting (quota windows, worker start-up, retries), not computing. TEST_PROCS=0 is serial.
TEST_PROCS ?= 4

.PHONY: help install redis redis-cluster-tools chromium run test coverage check lint format bench fuzz flower worker api sandbox clean

help:
	@echo "make run     - sandbox + API + worker + sample traffic, with a summary (Ctrl-C stops)"
	@echo "make test    - the whole test suite (unit + integration against real Redis/Celery/sandbox)"
	@echo "make coverage - the suite with line coverage of app/ and workers/"
	@echo "make check   - ruff + mypy strict"
	@echo "make bench   - benchmarks, writes docs/benchmarks.md"
	@echo "make fuzz    - schemathesis over the whole API, about FUZZ_MINUTES (10) minutes"
	@echo "make flower  - Flower dashboard on http://127.0.0.1:5555"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "error: Python >= 3.11 is required ($(PYTHON) is $$($(PYTHON) -V 2>&1))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

redis: $(STAMP)
	@bash deploy/ensure-redis.sh "$(PY)"

# The tests also start a Redis Cluster of their own (redis-server and redis-cli).
redis-cluster-tools: $(STAMP)
	@bash deploy/ensure-redis.sh "$(PY)" --cluster-tools

run: install redis
	$(PY) -m app demo

chromium:
	@bash deploy/ensure-chromium.sh

test: install redis-cluster-tools chromium
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist worksteal

coverage: install redis-cluster-tools chromium
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist worksteal --cov --cov-report=term:skip-covered

check: install
	$(VENV)/bin/ruff check app workers tests bench
	$(VENV)/bin/ruff format --check app workers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff format app workers tests bench
	$(VENV)/bin/ruff check --fix app workers tests bench

bench: install redis
	$(PY) -m bench

# Not part of `make test`: minutes long by design. FUZZ_MINUTES and FUZZ_SEED change the run.
fuzz: install redis
	$(PY) -m bench.fuzz $(if $(FUZZ_MINUTES),--minutes $(FUZZ_MINUTES)) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

flower: install redis
	$(PY) -m workers.flower --port=5555

worker: install redis
	$(PY) -m app worker

api: install redis
	$(PY) -m app api

sandbox: install
	$(PY) -m app sandbox

clean:
	rm -rf $(VENV) .run *.egg-info .pytest_cache .mypy_cache .ruff_cache
