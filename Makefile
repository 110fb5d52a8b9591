# Quick start: `make demo` runs the gateway with the API simulator; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/pacsor: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pacsor needs Python 3.11 or newer (PYTHON=$(PYTHON))")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/pacsor
	$(BIN)/pacsor up --demo

test: $(BIN)/pacsor
	$(BIN)/python -m pytest

lint: $(BIN)/pacsor
	$(BIN)/ruff check pacsor consumers streams tests bench
	$(BIN)/mypy

bench: $(BIN)/pacsor
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pacsor demo-pacs
