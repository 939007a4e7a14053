# Set-up and test commands. Every target installs what it needs into .venv first.
#   make install   create .venv, install torch 2.13.0, vLLM 0.32.0 (empty build) and this package
#   make test      install, then run the test suite on the CPU backend
#   make demo      install, then serve a small model on the CPU backend and ask it a question
#   make bench     install, then run the benchmarks against vLLM's own CPU build
#   make lint      ruff
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
TORCH_VERSION := 2.13.0
VLLM_VERSION := 0.32.0
# The torchvision release built for TORCH_VERSION (vision-language processors need it).
TORCHVISION_VERSION := 0.28.0
PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers, each file whole on one worker (its engines
# are module-scoped). vLLM runs each engine on one thread, so two workers use two cores.
TEST_WORKERS ?= 2
# Sources whose change requires rebuilding/reinstalling the package (csrc is compiled by setup.py).
PKG_SOURCES := pyproject.toml setup.py CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: install test demo bench lint clean

install: $(STAMPS)/package

$(STAMPS)/venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/torch: $(STAMPS)/venv
	$(PIP) install -q torch==$(TORCH_VERSION) numpy
	@touch $@

# vLLM without CUDA kernels. Re-pinning torch afterwards guards against a resolver upgrade.
$(STAMPS)/vllm: $(STAMPS)/torch
	VLLM_TARGET_DEVICE=empty VLLM_SKIP_VERSION_SUFFIX=1 $(PIP) install -q --no-binary vllm vllm==$(VLLM_VERSION)
	$(PIP) install -q torch==$(TORCH_VERSION)
	@touch $@

# torchvision for this torch; where the registry's wheel cannot load beside the CPU torch, its
# pure-Python repack (tools/torchvision_pyonly.py says why and what that leaves out).
$(STAMPS)/torchvision: $(STAMPS)/vllm tools/torchvision_pyonly.py
	$(PY) tools/torchvision_pyonly.py $(TORCHVISION_VERSION)
	@touch $@

$(STAMPS)/package: $(STAMPS)/torchvision $(PKG_SOURCES)
	$(PIP) install -q pybind11 "cmake>=3.26" ninja setuptools wheel
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation -e ".[dev]"
	@touch $@

# pytest exits 5 when it collects no test; that is reported, not treated as a crash.
test: install
	@set +e; VLLM_ASCEND_DEVICE=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		$(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

demo: install
	VLLM_ASCEND_DEVICE=cpu $(PY) tools/demo.py

bench: install
	PYTHON=$(PYTHON) bash benchmarks/setup_peer.sh
	$(PY) benchmarks/run_all.py

lint: install
	$(PY) -m ruff check vllm_ascend tests tools benchmarks examples

clean:
	rm -rf build *.egg-info vllm_ascend/*.so
