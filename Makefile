# Two commands matter on a fresh machine: `make demo` and `make test`.
# Everything they need is installed from here: uv (pinned, from PyPI), the locked
# Python environment (uv.lock), and Funnel built from source with the Go toolchain.

SHELL := /bin/bash
UV_VERSION ?= 0.13.9
FUNNEL_VERSION ?= v0.12.2
# Funnel takes minutes to compile, so its binary is cached outside the checkout and
# reused by every clone on the machine; scripts/build-funnel.sh checks the version.
FUNNEL_BIN_DIR ?= $(HOME)/.cache/airflow-provider-tes/funnel-$(FUNNEL_VERSION)
export FUNNEL_VERSION FUNNEL_BIN_DIR
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PYTEST_ARGS ?=

.PHONY: help uv sync funnel browser deployment lint test test-compat test-deploy demo bench clean

help:
	@echo "make demo   - set up everything, then run the hello-world DAG against a local Funnel + S3"
	@echo "make test   - set up everything, then ruff, mypy and the whole test suite (deployment suite included)"
	@echo "make test-compat - the example DAGs and the trigger/operator tests on the oldest supported Airflow"
	@echo "make test-deploy - the deployment suite alone: PostgreSQL, Redis, CeleryExecutor and two triggerers"
	@echo "make bench  - benchmarks (not part of make test)"

uv:
	@if ! command -v "$(UV)" >/dev/null 2>&1; then \
	  echo "installing uv $(UV_VERSION) from PyPI"; \
	  python3 -m pip install --quiet --user "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"; \
	fi

sync: uv
	"$(UV)" sync --frozen

funnel:
	scripts/build-funnel.sh "$(FUNNEL_BIN_DIR)"

lint: sync
	"$(UV)" run --frozen ruff check .
	"$(UV)" run --frozen ruff format --check .
	"$(UV)" run --frozen mypy

browser:
	scripts/install-browser.sh

# The single-box suite, then the deployment suite (tests/deployment: a production-shaped Airflow
# of its own, see test-deploy), each named test shown.
test: sync funnel browser deployment lint
	"$(UV)" run --frozen pytest --ignore=tests/deployment $(PYTEST_ARGS)
	"$(UV)" run --frozen pytest tests/deployment -v $(PYTEST_ARGS)

deployment:
	scripts/install-deployment.sh

# Airflow as production runs it, on 127.0.0.1: PostgreSQL and Redis (Debian's packages, installed
# here when missing), CeleryExecutor, api-server, scheduler, dag-processor, a Celery worker and
# two triggerers; a fan-out, a triggerer killed and one frozen, a worker killed during a submit,
# a scheduler restart, and the single-box outcomes (docs/deployment.md).
test-deploy: sync funnel deployment
	"$(UV)" run --frozen pytest tests/deployment -v $(PYTEST_ARGS)

# The oldest Airflow the provider supports (compat/pyproject.toml pins it; compat/uv.lock locks
# the rest), in its own environment (compat/.venv): the example DAGs through `airflow dags test`
# and the trigger, operator and decorator tests, against the same Funnel + moto stack.
# OpenLineage is not installed there, so its example test is left out.
COMPAT_TESTS ?= tests/test_examples.py tests/test_trigger.py tests/test_operator_validation.py tests/test_decorator.py
test-compat: uv funnel
	"$(UV)" sync --frozen --project compat
	"$(UV)" run --frozen --project compat python -c \
	  'import airflow; print("test-compat: Apache Airflow", airflow.__version__)'
	"$(UV)" run --frozen --project compat pytest $(COMPAT_TESTS) -k "not openlineage" $(PYTEST_ARGS)

demo: sync funnel
	"$(UV)" run --frozen python -m scripts.demo

bench: sync funnel
	"$(UV)" run --frozen python -m benchmarks.run

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache tests/artifacts dist
