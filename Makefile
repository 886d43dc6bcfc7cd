# `make test` is the project's test command; .ci/run calls exactly that.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint common-tests docs docs-tables dist demo demo-app bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache src tests benchmarks examples metrics demo tools
	$(VENV)/bin/ruff format --no-cache --check src tests benchmarks examples metrics demo tools

# Transformers' common test suites (its wheel has none): the installed release's source archive from PyPI, kept in
# .cache/ (downloaded once; tests/transformers_common/__init__.py tells how they are loaded).
common-tests: $(STAMP)
	$(PY) tests/transformers_common/fetch_common_tests.py

# The docs site (mkdocs.yml), built strictly: a broken link, a missing page or API reference fails. It builds
# offline (no web fonts or assets); the site goes to .cache/site.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .cache/site

# The docs' measured tables, rendered from their results files in docs/results/ (tools/docs_tables.py; the tests
# fail when a table differs from its rendering).
docs-tables:
	$(PYTHON) tools/docs_tables.py

# The sdist and the wheel users install, in dist/.
dist: $(STAMP)
	$(PY) -m build --outdir dist .

# SEPS_REQUIRE_COMMON_TESTS=1: tests/test_transformers_common.py fails (instead of skipping) without those suites.
test: lint common-tests docs
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
