# tidegate: `make demo` runs the main job locally, `make test` runs the whole suite.
# Each target sets up its own virtual environment (.venv) from pyproject.toml.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test worker clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	scripts/install-prometheus.sh
	$(BIN)/python -m sandbox.demo $(DEMO_ARGS)

test: $(STAMP)
	scripts/install-prometheus.sh
	$(BIN)/python -m pytest -q

worker: $(STAMP)
	$(BIN)/python worker.py

# `make bench`: the benchmarks on the sandbox stack; writes docs/benchmarks.md and its plot (~11 min).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	scripts/install-prometheus.sh
	BENCH_COMMAND="make bench" $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache *.egg-info
