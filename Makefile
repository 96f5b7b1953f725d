# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs what
# it needs; torch==2.13.0 (CPU build, on this machine's disk) goes in before anything that depends
# on torch, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adcp-installed
TORCH := torch==2.13.0

.PHONY: demo test install lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/adcp demo

lint: install
	$(VENV)/bin/lint-imports

test: install lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
