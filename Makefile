# Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEV := $(VENV)/.dev-installed
STAMP_RUN := $(VENV)/.run-installed

.PHONY: demo test lint types unit notebooks bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[emulator]'
	touch $@

$(STAMP_DEV): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev,emulator,plot]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(PY) -m dolambda demo

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check dolambda handler tests
	$(VENV)/bin/ruff format --check dolambda handler tests

types: $(STAMP_DEV)
	$(VENV)/bin/mypy

unit: $(STAMP_DEV)
	$(PY) -m pytest -q

test: lint types unit

bench: $(STAMP_DEV)
	$(PY) -m pip install --quiet -e '.[bench]' || echo "bench extra not fully installable; peers skipped"
	$(PY) tests/benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
