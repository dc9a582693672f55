# Two commands do all the set-up on a fresh machine:
#   make run    venv + install + native build, then the whole pipeline on the built-in sample
#   make test   venv + install + native build, then ruff (pyflakes + import order) and the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= runs/sample
STAMP  := $(VENV)/.fastembed-tune-installed
TSTAMP := $(VENV)/.fastembed-tune-test-installed

.PHONY: install run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# torch is pinned to the CPU wheel first (a plain "torch" request would pull a CUDA build);
# constraints.txt keeps every later install from replacing it. `make run` needs only the package;
# `make test` adds the test and benchmark extras. setup.py drives CMakeLists.txt; the native build is
# incremental (build/cmake-*): a change under csrc/ re-runs the editable install, which recompiles
# only the changed files and copies _native*.so into fastembed_tune/.
$(STAMP): $(PY) pyproject.toml setup.py MANIFEST.in CMakeLists.txt constraints.txt $(wildcard csrc/*)
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt "setuptools>=77" wheel "pybind11>=2.12" "cmake>=3.18" ninja
	$(PIP) install -c constraints.txt --no-build-isolation -e .
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(PIP) install -c constraints.txt --no-build-isolation -e ".[test,bench]"
	# fastembed (the client tests load our exports with) pins huggingface_hub < 2, which transformers 5 outgrew:
	# its own code runs fine with ours, so it goes in without its pins, and its other needs by name
	$(PIP) install -c constraints.txt --no-deps "fastembed==0.9.1"
	$(PIP) install -c constraints.txt loguru mmh3 py_rust_stemmers
	# ranx (the tests' reference metrics) compiles its numba kernels on first use, ~2 min on 2 cores: once, here
	$(PY) scripts/warm_ranx.py
	touch $(TSTAMP)

install: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fastembed-tune run --output $(OUT)

test: $(TSTAMP)
	$(VENV)/bin/ruff check fastembed_tune tests benchmarks scripts
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests --doctest-modules fastembed_tune

bench: $(TSTAMP)
	cd benchmarks && HF_HUB_OFFLINE=1 ../$(PY) topk_side_by_side.py

clean:
	rm -rf build $(VENV) runs .pytest_cache *.egg-info fastembed_tune/_native*.so
