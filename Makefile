# flowkit: two commands do all the set-up on a fresh clone (only python3 needed).
#   make train   creates .venv, installs flowkit, trains Real NVP on the bundled digits, then prints
#                the commands that sample, evaluate and list it
#   make test    creates .venv, installs flowkit + test tools + the example plugin, runs pytest
#   make dist    builds the sdist and, from it, the wheel into dist/ (what a release uploads)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLOWKIT_DATA ?= $(abspath ../shared/data)
export FLOWKIT_DATA

# the run folder of `make train` (its name is the one flowkit would generate); TRAIN_ARGS adds
# options, e.g. make train TRAIN_ARGS="--set train.steps=200"
RUN_NAME := realnvp-mle-digits-$(shell date +%Y%m%d-%H%M%S)
TRAIN_ARGS ?=

.PHONY: train test lint typecheck format install dist clean

$(STAMP): pyproject.toml constraints.txt docs/examples/flowkit-example-plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# a distribution named `flowkit` (flowkit before its rename to torch-flowkit, or the unrelated
	@# flow-cytometry package) would share the import name: never keep one beside torch-flowkit
	$(BIN)/python -m pip uninstall --quiet --yes flowkit 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e docs/examples/flowkit-example-plugin
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/flowkit run --config realnvp-digits --out runs --name $(RUN_NAME) $(TRAIN_ARGS)
	@echo
	@echo "Trained runs/$(RUN_NAME). Next (or 'source $(BIN)/activate' first, then type plain flowkit):"
	@echo "  $(BIN)/flowkit sample runs/$(RUN_NAME) -n 64 --out runs/$(RUN_NAME)/grid.png"
	@echo "  $(BIN)/flowkit eval runs/$(RUN_NAME)"
	@echo "  $(BIN)/flowkit list"

test: $(STAMP)
	$(BIN)/python -m pytest

# lint-imports checks [tool.importlinter] in pyproject.toml (the core imports no plugin and no CLI).
# flowkit/plugins and flowkit/cli are links to plugins/ and cli/, so the import graph of the source
# tree has the installed layout (flowkit.plugins, flowkit.cli) that package-dir gives wheels.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	@$(MAKE) --no-print-directory typecheck

# mypy with [tool.mypy] of pyproject.toml: flowkit/, and through its links plugins/ and cli/
typecheck: $(STAMP)
	$(BIN)/python -m mypy

# the house style: ruff format (checked by make lint and the pre-commit hooks)
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# sdist first, then the wheel built from the unpacked sdist (so a file missing from the sdist
# fails here, not on a user's machine); twine check when twine is installed
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python .ci/build-dist dist
	@if $(BIN)/python -m twine --version >/dev/null 2>&1; then $(BIN)/python -m twine check --strict dist/*; fi

clean:
	rm -rf $(VENV) runs build dist *.egg-info

# The documentation site: mkdocs.yml, built with --strict into site/ (a broken link, a missing page
# or an unresolved API reference fails the build); open site/index.html, search works offline.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict
.PHONY: docs
