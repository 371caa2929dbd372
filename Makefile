# Two commands for a fresh clone:
#   make demo   set everything up and open the quickstart notebook in JupyterLab
#   make test   set everything up and run lint, type checks, the whole test suite and the docs build
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
# the browser the tests launch (tests/e2e/conftest.py reads the same variable)
export DEFUSE_CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test install js browser data lint typecheck pytest docs docs-notebooks bench clean

demo: install
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb

test: install browser data lint typecheck docs pytest

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

# Debian packages some tests need. Installed only where that can work (root, with apt-get);
# anywhere else make says what is missing and goes on, and those tests skip with that reason.
# APT=no (or APT=yes) overrides the check, e.g. `make browser data APT=no` to see the messages.
APT ?= $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo yes || echo no)

# $(call system_package,PACKAGE,SHELL TEST THAT IT IS THERE,WHAT NEEDS IT)
define system_package
	@if $(2); then :; \
	elif [ "$(APT)" = yes ]; then \
		echo "installing $(1) (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; \
	else \
		echo "MISSING: Debian package '$(1)', for $(3); those tests will be skipped."; \
		echo "         Install it with: sudo apt-get install -y $(1)   (Debian/Ubuntu)"; \
	fi
endef

browser:
	$(call system_package,chromium,test -x $(DEFUSE_CHROMIUM),the browser tests (tests/e2e))

data:
	$(call system_package,dataset-fashion-mnist,test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz,the Fashion-MNIST notebook)

lint: $(STAMP)
	$(VENV)/bin/ruff check defuse_widgets tests benchmarks docs
	$(VENV)/bin/ruff format --check defuse_widgets tests benchmarks docs
	$(VENV)/bin/lint-imports  # the layer order of docs/architecture.md

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# two workers: the browser tests (mostly waiting on a kernel or the page) beside the rest, each
# module on one worker (tests/conftest.py); PYTEST_WORKERS=0 runs everything in one process
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(VENV)/bin/pytest -q -rfEs -n $(PYTEST_WORKERS) --dist loadgroup

# the docs site into build/site; --strict: a broken link or an undocumentable name fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# run the four notebooks (their defaults; teaching in quick mode) and keep copies with outputs in
# docs/notebooks/, which the site shows; re-run after changing a notebook's code (tests check it)
docs-notebooks: install
	$(PY) docs/scripts/run_notebooks.py

bench: install
	$(PY) benchmarks/identify.py

clean:
	rm -rf $(VENV) node_modules defuse_widgets/static build/site
