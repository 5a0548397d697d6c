# The two commands a newcomer needs (see README):
#   make demo   set up .venv and run a small tuning study on the built-in synthetic corpus
#   make test   set up .venv and run the test suite
# and, for contributors: make check (lint, format, types, docs), make docs (serve the docs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check docs bench clean

# torch==2.13.0 is pinned inside requirements.txt so that it is installed in the same pip
# command as everything else (pip then takes the local CPU wheel, not a multi-GB CUDA build).
$(STAMP): requirements.txt requirements-dev.txt requirements-bench.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/speechtune tune --config conf/tuning.yaml --run-dir runs/demo --resume

test: $(STAMP)
	$(PY) -m pytest -q

check: $(STAMP)
	$(VENV)/bin/ruff check speechtune tests benchmarks
	$(VENV)/bin/ruff format --check speechtune tests benchmarks
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .cache/site

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache site
