# The README's two commands (`make demo`, `make test`) set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modeconn-installed

.PHONY: demo test test-fast test-slow lint bench clean

# torch==2.13.0 first: a bare `torch>=2.2` in a fresh venv would pull a multi-GB CUDA build.
# configilm (MIT) only for its 24+24 real BigEarthNet v2 patches the tests read, without its
# dependencies (they would pin numpy below 2 and pull in timm) and past its Requires-Python <3.12,
# which its code needs but its data files do not; tests/benv2_fixture.py names the version too.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,ot,cluster,mnist5k,hf]"
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python configilm==0.7.1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modeconn demo --out results/demo

# The report's browser test needs Chromium: installed (as root) when missing.
test: $(STAMP)
	scripts/browser.sh
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 -m "not slow" tests
	$(PY) -m pytest -q -n 2 -m "slow" tests

test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) results .pytest_cache
