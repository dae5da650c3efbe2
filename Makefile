# Two entry points on a fresh machine:  `make run`  and  `make test`.
# Both create .venv and install the project on first use.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is installed before the project so that pip never resolves it on its own: an unpinned
# torch pulls a multi-GB CUDA build. This pin is a CPU wheel where one is on disk; elsewhere
# add TORCH_INDEX=https://download.pytorch.org/whl/cpu. A GPU user installs their own build
# into $(VENV) first (or sets TORCH_SPEC): an importable torch is never replaced.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

# Offline and quiet: nothing is downloaded at run time, no telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

# Bytecode for every installed module, on all cores (pip compiles on one; a fresh install took
# 3 min 15 s that way on 2 cores, 2 min 35 s this way). Without it each process compiles what it
# imports, and where PYTHONDONTWRITEBYTECODE is set it does so at every start. Failures are
# template files that are not Python (pip skips them too).
COMPILE = $(PY) -m compileall -qq -j 0 $(VENV)/lib || true

.PHONY: install run test test-distributed lint bench bench-quick viz mlflow-ui clean-data

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		$(PY) -m pip install --quiet --no-compile "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install --quiet --no-compile -e ".[test]"
	$(COMPILE)
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/kedro run

test: install
	$(VENV)/bin/pytest

# DeepSpeed ZeRO-2/3 and FSDP launches on this machine's CPUs, one at a time (2 processes each);
# DeepSpeed's C++ op is compiled into the venv, not ~/.cache.
test-distributed: install
	$(PY) -m pip install --quiet --no-compile -e ".[test,deepspeed]"
	$(COMPILE)
	TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch_extensions $(VENV)/bin/pytest -m distributed -n 0

lint: install
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks
	$(VENV)/bin/mypy

# Every benchmark, one at a time, into one table (benchmarks/results/, and README.md's
# Benchmarks section). Run it on an otherwise idle machine.
bench: install
	$(PY) benchmarks/run.py --readme

bench-quick: install
	$(PY) benchmarks/run.py --quick

viz: install
	$(VENV)/bin/kedro viz run

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean-data:
	find data -type f ! -name .gitkeep -delete
	rm -f mlflow.db
