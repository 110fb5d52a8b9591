# Quick start: `make demo` runs the gateway with the API simulator; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean

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

# The pure tests only (tests/unit: no server starts), in seconds.
test-fast: $(BIN)/pacsor
	$(BIN)/python -m pytest -q tests/unit

# mypy reads the tree as it installs (consumers/ and streams/ inside pacsor/): a tree of links.
TYPECHECK := build/typecheck
lint: $(BIN)/pacsor
	$(BIN)/ruff check pacsor consumers streams tests bench
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	cp -rs $(CURDIR)/pacsor $(TYPECHECK)/pacsor
	ln -s $(CURDIR)/consumers $(TYPECHECK)/pacsor/consumers
	ln -s $(CURDIR)/streams $(TYPECHECK)/pacsor/streams
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy -p pacsor

bench: $(BIN)/pacsor
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pacsor demo-pacs build
