# Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEV := $(VENV)/.dev-installed
STAMP_RUN := $(VENV)/.run-installed

.PHONY: demo test lint types unit notebooks bench clean

# dolambda needs Python >= 3.11; a .venv made by another Python is rebuilt (its stamp names
# the interpreter's version, so switching Pythons never leaves a broken venv behind)
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP_PY := $(VENV)/.python-$(PYVER)

$(STAMP_PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "dolambda needs Python >= 3.11; $(PYTHON) is $(PYVER): run make PYTHON=python3.11"; exit 1; }
	@if [ -d $(VENV) ] && [ "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$(PYVER)" ]; then \
	  echo "$(VENV) was made by another Python: rebuilding it for Python $(PYVER)"; rm -rf $(VENV); fi
	@if [ ! -x $(PY) ]; then $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip; fi
	touch $@

$(VENV)/bin/python: $(STAMP_PY)

$(STAMP_RUN): pyproject.toml $(STAMP_PY)
	$(PY) -m pip install --quiet -e '.[emulator]'
	touch $@

$(STAMP_DEV): pyproject.toml $(STAMP_PY)
	$(PY) -m pip install --quiet -e '.[dev,emulator,plot]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(PY) -m dolambda demo

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check dolambda handler tests
	$(VENV)/bin/ruff format --check dolambda handler tests
	$(VENV)/bin/lint-imports

types: $(STAMP_DEV)
	$(VENV)/bin/mypy

unit: $(STAMP_DEV)
	$(PY) -m pytest -q

test: lint types unit

notebooks: $(STAMP_DEV)
	$(PY) -m pytest -q tests/test_notebooks.py

bench: $(STAMP_DEV)
	$(PY) -m pip install --quiet -e '.[bench]' || echo "bench extra not fully installable; peers skipped"
	$(PY) tests/benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
