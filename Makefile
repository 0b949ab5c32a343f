# Everything a fresh machine needs: `make test` and `make example` create the
# virtualenv, install the package with its pinned extras, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format example examples bench bench-quick bench-half clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,examples,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest adam_optax tests README.md docs

example: $(STAMP)
	$(BIN)/python examples/regression.py

examples: $(STAMP)
	for f in examples/*.py; do $(BIN)/python $$f || exit 1; done

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

bench-half: $(STAMP)
	$(BIN)/python benchmarks/half_precision.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
