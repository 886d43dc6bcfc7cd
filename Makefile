# `make test` is the project's test command; .ci/run calls exactly that.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint common-tests demo demo-app bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache src tests benchmarks examples metrics demo
	$(VENV)/bin/ruff format --no-cache --check src tests benchmarks examples metrics demo

# Transformers' common test suites (its wheel has none): the installed release's source archive from PyPI, kept in
# .cache/ (downloaded once; tests/transformers_common/__init__.py tells how they are loaded).
common-tests: $(STAMP)
	$(PY) tests/transformers_common/fetch_common_tests.py

# SEPS_REQUIRE_COMMON_TESTS=1: tests/test_transformers_common.py fails (instead of skipping) without those suites.
test: lint common-tests
	SEPS_REQUIRE_COMMON_TESTS=1 $(PY) -m pytest -q -n 2

# The inner loop: everything but the tests marked slow (subprocesses, several processes, the notebook).
test-fast: lint
	$(PY) -m pytest -q -n 2 -m "not slow"

# Trains on the synthetic benchmark with backbones that need no download, then prints the test table.
demo: $(STAMP)
	$(PY) examples/train_retrieval.py --output_dir runs/demo --overwrite_output_dir --data_root data/synthetic

# The demo page (demo/app.py) on the `make demo` model, ranking the synthetic test images: http://127.0.0.1:7860
demo-app: $(STAMP)
	$(PY) demo/app.py --model runs/demo/best --gallery data/synthetic/images --pattern 'test_*.png'

bench: $(STAMP)
	$(PY) benchmarks/bench_similarity.py

clean:
	rm -rf $(VENV) build src/*.egg-info .cache
