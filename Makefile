# sorakit — the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned in the same pip command as everything else so that pip never pulls a CUDA build
# on a CPU machine. On a GPU machine: `make venv TORCH=torch` (or the CUDA build you want).
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= auto

.PHONY: venv test lint demo bench train-builtin lora-demo clean

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
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f; done

train-builtin: venv
	$(PY) -m sorakit.builtin.recipe --workdir runs/builtin

# LoRA: teach the built-in model orange and diamond (docs/training.md#lora-fine-tuning); resumable, offline
lora-demo: venv
	$(PY) -m sorakit.builtin.lora_recipe --workdir runs/lora-demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
