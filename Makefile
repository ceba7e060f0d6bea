# flowkit: two commands do all the set-up on a fresh clone (only python3 needed).
#   make train   creates .venv, installs flowkit, trains Real NVP on the bundled digits
#   make test    creates .venv, installs flowkit + test tools + the example plugin, runs pytest
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLOWKIT_DATA ?= $(abspath ../shared/data)
export FLOWKIT_DATA

.PHONY: train test lint install clean

$(STAMP): pyproject.toml constraints.txt docs/examples/flowkit-example-plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e docs/examples/flowkit-example-plugin
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/flowkit run --config realnvp-digits --out runs

test: $(STAMP)
	$(BIN)/python -m pytest

# lint-imports checks [tool.importlinter] in pyproject.toml (the core imports no plugin and no CLI).
# It builds the import graph from the directory where `import flowkit` finds the package, and the
# editable install maps flowkit.plugins to plugins/ and flowkit.cli to cli/ through an import hook
# that the graph builder cannot see. So it runs on a tree of links with the installed layout
# (keep it in step with [tool.setuptools] package-dir); links, so it is never stale.
IMPORT_TREE := build/import-graph

lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)/flowkit
	ln -s $(CURDIR)/flowkit/* $(IMPORT_TREE)/flowkit/
	ln -s $(CURDIR)/plugins $(IMPORT_TREE)/flowkit/plugins
	ln -s $(CURDIR)/cli $(IMPORT_TREE)/flowkit/cli
	ln -s $(CURDIR)/pyproject.toml $(IMPORT_TREE)/pyproject.toml
	cd $(IMPORT_TREE) && $(abspath $(BIN))/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs build dist *.egg-info
