# wsss_fast — set up, build, test, benchmark and run the demo.
#   make demo   set up a .venv and run the whole pipeline on built-in synthetic data
#   make test   set up a .venv and run the test suite
#   make mutants  plant each bug of tests/mutants/ and check its tests fail (slow, not in test; docs/mutants.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
PYTEST_ARGS ?=
DEMO_OUT ?= demo_out

.PHONY: venv build test bench demo clean gpu-check gpu-wheels mutants

venv: $(VENV)/.stamp

# constraints.txt: the other packages' versions, the same on every machine (CONSTRAINTS= drops them)
CONSTRAINTS ?= -c constraints.txt

$(VENV)/.stamp: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" "setuptools>=77" wheel ninja
	$(PIP) install -q $(TORCH_PINS)
	WSSS_FAST_NO_EXT=1 $(PIP) install -q --no-build-isolation $(CONSTRAINTS) -e ".[test]"
	touch $@

# Incremental in-place build of wsss_fast._C (ninja keeps its state under build/).
build: wsss_fast/.build-stamp

wsss_fast/.build-stamp: $(VENV)/.stamp setup.py $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

# MUTANTS_ARGS: e.g. --only NAME ..., --build (also the csrc mutants), --json FILE.
mutants: build
	$(PY) tests/mutants/run_mutants.py --baseline $(MUTANTS_ARGS)

bench: build
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds -q $(PYTEST_ARGS)

demo: build
	$(VENV)/bin/wsss-fast demo --out $(DEMO_OUT)

gpu-check:
	bash benchmarks/gpu_check.sh

# Wheels the GPU machine lacks (it has no network), carried in .whl/: pure-Python ones, and
# pydensecrf2 (the CRF oracle) built here for this Python in .whl/native/; for another Python
# (the GPU image's 3.12) its sdist and the pure-Python Cython 0.29 it builds with, in .whl/src/;
# in .whl/build/ a setuptools that reads pyproject.toml's license string (>= 77), used by the build
# there only if the image's setuptools is older.
gpu-wheels: venv
	mkdir -p .whl/native .whl/src .whl/build
	$(PIP) download -q --no-deps --only-binary=:all: -d .whl/build "setuptools>=77"
	$(PIP) wheel -q --no-deps -w .whl grad-cam==1.5.7 ttach==0.0.3 segmentation-models-pytorch==0.6.0 pydicom==3.0.2 expecttest==0.3.0
	$(PIP) wheel -q --no-deps -w .whl/native pydensecrf2==1.1
	$(PIP) download -q --no-deps --no-binary=:all: -d .whl/src pydensecrf2==1.1
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl/src cython==0.29.36

clean:
	rm -rf build wsss_fast/_C*.so wsss_fast/.build-stamp
