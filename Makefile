# Two commands for a fresh clone:
#   make demo   set everything up and open the quickstart notebook in JupyterLab
#   make test   set everything up and run lint, type checks and the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test install js browser data lint typecheck pytest bench clean

demo: install
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb

test: install browser data lint typecheck pytest

$(STAMP): pyproject.toml package.json package-lock.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	npm ci --no-audit --no-fund
	npm run build
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) js

js: $(STAMP)
	npm run build

browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

data:
	@test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check defuse_widgets tests benchmarks
	$(VENV)/bin/ruff format --check defuse_widgets tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q -rs

bench: install
	$(PY) benchmarks/identify.py

clean:
	rm -rf $(VENV) node_modules defuse_widgets/static
