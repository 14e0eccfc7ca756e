# The two set-up commands of the README: `make run` and `make test`.
# Both install from the committed lock files (exact versions and hashes), never from
# whatever the package index serves today; `make lock` regenerates the locks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCKS := requirements/runtime.txt requirements/dev.txt
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
LATEST_VENV := .venv-latest
FUZZ_SECONDS ?= 60
CONFORMANCE_VENV := .venv-conformance
CONFORMANCE_STAMP := $(CONFORMANCE_VENV)/.installed
CONFORMANCE_ARGS ?=
SOURCES := protocol storage relay loadtest tests benchmarks requirements
PIP_LOCKED := -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps
PIP_PROJECT := -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

.PHONY: run test lint typecheck check-lock checks fuzz soak conformance bench lock test-latest clean

check-lock:
	@$(PYTHON) requirements/lockcheck.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The runtime set only: what `relay serve` needs, no linters or test tools.
$(RUNTIME_STAMP): pyproject.toml $(LOCKS) | check-lock $(BIN)/python
	$(BIN)/python $(PIP_LOCKED) -r requirements/runtime.txt
	$(BIN)/python $(PIP_PROJECT)
	touch $@

$(DEV_STAMP): pyproject.toml $(LOCKS) | check-lock $(BIN)/python
	$(BIN)/python $(PIP_LOCKED) -r requirements/dev.txt
	$(BIN)/python $(PIP_PROJECT)
	touch $@ $(RUNTIME_STAMP)

run: check-lock $(RUNTIME_STAMP)
	$(BIN)/relay serve

lint: check-lock $(DEV_STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: check-lock $(DEV_STAMP)
	$(BIN)/mypy --strict

test: check-lock $(DEV_STAMP)
	$(MAKE) --no-print-directory checks BIN=$(BIN)

# Lint, type-check and the whole suite with the tools of $(BIN), installed by the caller.
checks:
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy --strict
	$(BIN)/python -m pytest -q --durations=20
	$(BIN)/python -m tests.fuzz.run --seconds 10

# Every fuzz target in turn for FUZZ_SECONDS each, from its committed corpus (tests/fuzz/).
fuzz: check-lock $(DEV_STAMP)
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# Not part of the gate: a million envelopes through 20 node kills and a PostgreSQL and a
# Redis restart (tests/soak/run.py; its short version runs in the suite). Report under
# test-artifacts/soak/.
SOAK_ENVELOPES ?= 1000000
soak: check-lock $(DEV_STAMP)
	$(BIN)/python -m tests.soak.run --envelopes $(SOAK_ENVELOPES) --kills 20 --out test-artifacts/soak

# The Autobahn TestSuite's server cases against the relay's WebSocket server (an echo in place
# of the relay's handler, tests/conformance/); prints a table per section. Not part of `make
# test`: kosoku, its runner, is a compiled wheel kept in a venv of its own, outside the locks.
# CONFORMANCE_ARGS="--write-doc docs/conformance.md" also writes the table into that page.
$(CONFORMANCE_STAMP): requirements/conformance.txt
	$(PYTHON) -m venv $(CONFORMANCE_VENV)
	$(CONFORMANCE_VENV)/bin/python $(PIP_LOCKED) -r requirements/conformance.txt
	touch $@

conformance: check-lock $(RUNTIME_STAMP) $(CONFORMANCE_STAMP)
	$(BIN)/python -m tests.conformance.run --kosoku $(CONFORMANCE_VENV)/bin/kosoku $(CONFORMANCE_ARGS)
# Issue 13's figures for both stores, as one table (a few minutes; not part of `make test`).
# BENCH_ARGS="--runs 3" for medians; PostgreSQL and Redis as in the README.
BENCH_ARGS ?=
bench: check-lock $(DEV_STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Regenerate both locks from pyproject.toml with uv (from the dev set, or bootstrapped).
lock: | $(BIN)/python
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet "uv>=0.5"
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes \
	    --custom-compile-command "make lock" \
	    pyproject.toml requirements/build.in -o requirements/runtime.txt
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes --extra dev \
	    --custom-compile-command "make lock" \
	    pyproject.toml requirements/build.in -o requirements/dev.txt
	$(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes \
	    --custom-compile-command "make lock" \
	    requirements/conformance.in -o requirements/conformance.txt
	$(PYTHON) requirements/lockcheck.py --write

# Not part of the gate: the newest versions pyproject.toml allows, in a venv of their own,
# so a release that breaks us is seen before the lock is moved to it.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip list --format=freeze > $(LATEST_VENV)/versions.txt
	$(MAKE) --no-print-directory checks BIN=$(LATEST_VENV)/bin

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(CONFORMANCE_VENV) .conformance .mypy_cache .pytest_cache .ruff_cache .fuzz
