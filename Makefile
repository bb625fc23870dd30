# Electric: everything a developer or CI runs.  `make run` for a first look,
# `make tests` for the suite.  Recipe lines start with a TAB.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-stamp
NPM_LOCK := $(wildcard tests/satellite_client/package-lock.json)

# Local Postgres clusters of the dev environment (no Docker needed).
DEV_DIR  ?= /tmp/electric-dev
PG1_PORT ?= 54321
PG2_PORT ?= 54322

# Dev defaults for `make shell` / `make run`; any of them can be overridden
# from the environment or the command line (make shell STATUS_PORT=6050).
CONNECTORS ?= postgres_1=postgresql://electric:password@127.0.0.1:$(PG1_PORT)/electric;postgres_2=postgresql://electric:password@127.0.0.1:$(PG2_PORT)/electric
ELECTRIC_DATA_DIR ?= ./electric_data
MIGRATIONS_DIR ?= ./migrations
OFFSET_STORAGE_FILE ?= ./offset_storage_data.dev.dat
DEV_ENV = CONNECTORS='$(CONNECTORS)' ELECTRIC_DATA_DIR='$(ELECTRIC_DATA_DIR)' \
	MIGRATIONS_DIR='$(MIGRATIONS_DIR)' OFFSET_STORAGE_FILE='$(OFFSET_STORAGE_FILE)'

# pytest-timeout's guard against a hung test (seconds per test).
TEST_TIMEOUT ?= 600
PYTEST_ARGS ?=

.PHONY: deps compile tests start_dev_env stop_dev_env shell run apply_migration \
	docker-build bench clean distclean

## deps: .venv with the package (editable) and test/dev extras; npm client for the Satellite tests
deps: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(NPM_LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=70" wheel
	$(PY) -m pip install -q -e '.[test,dev]'
	@if [ -n "$(NPM_LOCK)" ]; then \
	  echo "npm ci in tests/satellite_client"; \
	  (cd tests/satellite_client && npm ci --no-audit --no-fund --loglevel=error); \
	fi
	@touch $(STAMP)

## compile: regenerate the protobuf modules from proto/ (Satellite and Antidote; pinned protoc from grpcio-tools)
compile: deps
	$(PY) -m electric.pb_generate

## tests: the whole suite (starts and stops its own Postgres clusters)
tests: deps
	$(PY) -m pytest tests -q --timeout=$(TEST_TIMEOUT) --timeout-method=thread $(PYTEST_ARGS)

## start_dev_env: two PostgreSQL 15 clusters on 127.0.0.1:54321 and :54322 (electric/password, db electric)
start_dev_env:
	@$(PYTHON) -m tests.pgcluster start --port $(PG1_PORT) --datadir $(DEV_DIR)/pg1
	@$(PYTHON) -m tests.pgcluster start --port $(PG2_PORT) --datadir $(DEV_DIR)/pg2

## stop_dev_env: stop both clusters and delete their data
stop_dev_env:
	@$(PYTHON) -m tests.pgcluster stop --remove --datadir $(DEV_DIR)/pg1
	@$(PYTHON) -m tests.pgcluster stop --remove --datadir $(DEV_DIR)/pg2
	@rmdir $(DEV_DIR) 2>/dev/null || true

## shell: the service in the foreground against the dev env (Ctrl-C stops it)
shell: deps
	$(DEV_ENV) $(PY) -m electric run

## run: everything a newcomer needs: deps, the dev Postgres clusters, the service
run: deps start_dev_env
	@$(MAKE) --no-print-directory shell

## apply_migration name=NAME: apply MIGRATIONS_DIR/NAME through the running service
apply_migration:
	@if [ -z "$(name)" ]; then \
	  echo "usage: make apply_migration name=<migration>   (a folder in $(MIGRATIONS_DIR))"; exit 1; \
	fi
	@$(MAKE) --no-print-directory deps
	$(PY) -m electric apply-migration $(name)

## docker-build: image electric:local-build from docker/Dockerfile
docker-build:
	docker build -f docker/Dockerfile -t electric:local-build .

## bench: every bench/bench_*.py in turn (figures only)
bench: deps
	@set -e; for f in bench/bench_*.py; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(PY) "$$f"; \
	done

## clean: build and run leftovers (keeps .venv; `make distclean` removes it too)
clean:
	rm -rf build dist *.egg-info _trial_temp* .pytest_cache .hypothesis twisted/plugins/dropin.cache \
	  electric_data offset_storage_data*.dat
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) tests/satellite_client/node_modules
