# Quick start: `make demo` (install, then deploy example-repo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install system-deps lint test test-fast demo clean

$(BIN)/reconciler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/reconciler

system-deps:
	@scripts/install-system-deps

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check reconciler
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layering: pyproject.toml [tool.importlinter]
	$(BIN)/vermin -q -t=3.9- --no-tips --violations reconciler/agent  # runs on targets' python3

test: install system-deps lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow and not hosts"

demo: install system-deps
	@PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
