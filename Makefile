# The two commands of the README: `make run` and `make test`. Needs make and Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install install-dev browser-deps

run: $(VENV)/.deps
	$(PY) scripts/run.py

test: $(VENV)/.deps-dev browser-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian's chromium + chromium-driver for the browser tests: installed when possible, else one
# line saying what to install (scripts/browser_deps.sh).
browser-deps:
	@sh scripts/browser_deps.sh

install: $(VENV)/.deps
install-dev: $(VENV)/.deps-dev

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.deps: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(VENV)/.deps-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@ $(VENV)/.deps
