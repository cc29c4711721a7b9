# sorakit — the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned in the same pip command as everything else so that pip never pulls a CUDA build
# on a CPU machine. On a GPU machine: `make venv TORCH=torch` (or the CUDA build you want).
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= auto

.PHONY: venv test lint demo bench gpu-check train-builtin lora-demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[dev]"
	@touch $(STAMP)

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) -q tests
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

demo: venv
	$(VENV)/bin/sorakit generate "a red circle moving to the right" --output outputs/demo.mp4

bench: venv
	@set -e; for f in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do echo "== $$f"; $(PY) $$f; done

# One CUDA GPU: the CUDA-only tests and the Open-Sora-size benchmarks, < 8 min, report in outputs/gpu-check.md.
# Without a GPU it says so and exits 2 (`$(PY) benchmarks/gpu_check.py --dry-run`: the same on the CPU, tiny).
gpu-check: venv
	@$(PY) benchmarks/gpu_check.py --output outputs/gpu-check.md

# the built-in model v3 (buckets + reference masks, from v2's weights; ~1.4 h on 2 cores, resumable;
# OMP_NUM_THREADS=1 when other jobs share the CPU); the shipped
# v2's recipe: python -m sorakit.builtin.recipe --version 2 --workdir runs/builtin
train-builtin: venv
	$(PY) -m sorakit.builtin.recipe --version 3 --workdir runs/builtin-v3

# LoRA: teach the built-in model orange and diamond (docs/training.md#lora-fine-tuning); resumable, offline
lora-demo: venv
	$(PY) -m sorakit.builtin.lora_recipe --workdir runs/lora-demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
