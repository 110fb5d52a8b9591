# Quick start: `make demo` runs the gateway with the API simulator; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo dev test test-fast lint bench clean

# What running needs, nothing more. The install is editable (the tree is what runs), and
# setuptools' note on editable installs of a mapped layout (consumers/ as pacsor.consumers) is
# information only: it is the one warning silenced.
QUIET_PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet
$(BIN)/pacsor: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pacsor needs Python 3.11 or newer (PYTHON=$(PYTHON))")'
	@echo "installing pacsor into $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(QUIET_PIP) -e .
	@touch $@

# The test and lint tools, on top: only `make test`, `make lint` and `make dev` install them.
DEV := $(VENV)/.dev-installed
$(DEV): $(BIN)/pacsor
	@echo "installing the test and lint tools into $(VENV) ..."
	@$(QUIET_PIP) -e '.[dev]'
	@touch $@

dev: $(DEV)

demo: $(BIN)/pacsor
	@$(BIN)/pacsor up --demo

test: $(DEV)
	$(BIN)/python -m pytest

# The pure tests only (tests/unit: no server starts), in seconds.
test-fast: $(DEV)
	$(BIN)/python -m pytest -q tests/unit

# mypy reads the tree as it installs (consumers/ and streams/ inside pacsor/): a tree of links.
TYPECHECK := build/typecheck
lint: $(DEV)
	$(BIN)/ruff check pacsor consumers streams tests bench
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	cp -rs $(CURDIR)/pacsor $(TYPECHECK)/pacsor
	ln -s $(CURDIR)/consumers $(TYPECHECK)/pacsor/consumers
	ln -s $(CURDIR)/streams $(TYPECHECK)/pacsor/streams
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy -p pacsor

# Every benchmark of the README's figures, one after the other (about 12 minutes on 2 cores).
bench: $(BIN)/pacsor
	$(BIN)/python bench/ingest.py --quick
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/pipeline.py --studies 10 --gap 3 --no-replica
	$(BIN)/python bench/projection.py --stream --events 1000000 --rounds 1
	$(BIN)/python bench/memory.py --count 60 --size 10
	$(BIN)/python bench/memory.py --count 1 --size 1000

clean:
	rm -rf $(VENV) .pacsor demo-pacs build
