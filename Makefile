# Two commands: `make demo` and `make test`. Both install what is missing first.
# TORCH_SPEC: the torch build to install. torch==2.13.0 is a CPU build on the
# project's development machines; on a CUDA workstation set e.g. TORCH_SPEC=torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint check-py310 clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[train,edge,dev]"
	touch $(STAMP)

install: $(STAMP)
	@bash deploy/ensure-mosquitto.sh

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash deploy/demo.sh

test: install
	$(BIN)/ruff check models trainer edge_runtime deploy tests bench examples
	$(BIN)/vermin --no-tips --violations -t=3.10- --eval-annotations models edge_runtime
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	bash deploy/check-py310.sh

lint: install
	$(BIN)/ruff check models trainer edge_runtime deploy tests bench examples

check-py310:
	bash deploy/check-py310.sh

clean:
	rm -rf $(VENV) .venv310 .pytest_cache .ruff_cache
