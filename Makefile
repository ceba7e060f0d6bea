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
# flowkit/plugins and flowkit/cli are links to plugins/ and cli/, so the import graph of the source
# tree has the installed layout (flowkit.plugins, flowkit.cli) that package-dir gives wheels.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs build dist *.egg-info
