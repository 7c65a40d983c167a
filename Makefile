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

.PHONY: help uv sync funnel browser lint test demo bench clean

help:
	@echo "make demo   - set up everything, then run the hello-world DAG against a local Funnel + S3"
	@echo "make test   - set up everything, then ruff, mypy and the whole test suite"
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

test: sync funnel browser lint
	"$(UV)" run --frozen pytest $(PYTEST_ARGS)

demo: sync funnel
	"$(UV)" run --frozen python -m scripts.demo

bench: sync funnel
	"$(UV)" run --frozen python -m benchmarks.run

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache tests/artifacts dist
