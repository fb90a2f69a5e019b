# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs. PyTorch is installed first, pinned, so that pip never swaps it for another
# build (on the CI machines `torch==2.13.0` is a local CPU wheel; override TORCH_SPEC elsewhere).
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
# The oldest Triton vidgen supports (kernels/_aot.py: OLDEST_TRITON), beside the environment: the
# ahead-of-time test also compiles every kernel with it and its own ptxas.
OLDEST_TRITON ?= 3.6.0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.vidgen-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all install aot clean gpu-check reproduce

install: $(STAMP)

$(STAMP): pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton-$(OLDEST_TRITON) "triton==$(OLDEST_TRITON)"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/vidgen demo

# CI runs `make test` on 2 cores within 30 minutes: it leaves out the tests marked slow (broader
# sweeps of what the default set already covers once); `make test-all` runs them too.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# Same environment as the tests (TRITON_DEFAULT_FP_FUSION is part of Triton's cache key): warms their cache.
aot: $(STAMP)
	env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 $(PY) -m vidgen.kernels._aot

# On a lent GPU machine (docs/DEVELOPING.md, "On a GPU machine"): install without network, the suite on
# CUDA tensors, compute-sanitizer over every kernel, the benchmarks, each phase capped to end inside
# DEADLINE seconds (default 540). No .venv there: the image's python3 holds torch and triton, so this
# target builds nothing first. Try the plumbing anywhere: make gpu-check PYTHON=.venv/bin/python GPU_CHECK_ARGS=--dry-run
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) -m tools.gpu_check $(GPU_CHECK_ARGS)

# docs/RESULTS.md: trains the moving-shapes models and reruns every experiment on the CPU (about an
# hour on 2 cores; not part of the tests), then rewrites RESULTS.md's tables, docs/results/ and the
# built-in model's weights (vidgen/shapes/model/). Resumable: the work folder reproduce_out/ keeps
# every finished stage (delete it to start over). REPRODUCE_ARGS=--help lists the options.
REPRODUCE_ARGS ?=
reproduce: $(STAMP)
	nice -n 10 $(PY) -m vidgen.shapes.reproduce $(REPRODUCE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info vidgen/_lib
