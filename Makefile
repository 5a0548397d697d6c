# The two commands a newcomer needs (see README):
#   make demo   set up .venv and run a small tuning study on the built-in synthetic corpus
#   make test   set up .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

# torch==2.13.0 is pinned inside requirements.txt so that it is installed in the same pip
# command as everything else (pip then takes the local CPU wheel, not a multi-GB CUDA build).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/speechtune tune --config conf/tuning.yaml --run-dir runs/demo --resume

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
