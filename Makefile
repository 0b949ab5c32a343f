# Everything a fresh machine needs: `make test` and `make example` create the
# virtualenv, install the package with its pinned extras, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := adam_optax/_adam_fused_cpu.so

.PHONY: install kernel test lint format example examples bench bench-quick bench-half clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,examples,dev]"
	touch $(STAMP)

install: $(STAMP)

# The install builds the fused CPU kernel (hatch_build.py); this rebuilds it
# in place when its source changes. Without a C++ compiler it is skipped.
$(KERNEL): csrc/adam_fused_cpu.cc hatch_build.py | $(STAMP)
	$(BIN)/python hatch_build.py || echo "fused kernel not built: the XLA path will be used"

kernel: $(KERNEL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint kernel
	$(BIN)/python -m pytest adam_optax tests README.md docs

example: $(STAMP)
	$(BIN)/python examples/regression.py

examples: $(STAMP)
	for f in examples/*.py; do $(BIN)/python $$f || exit 1; done

bench: $(STAMP) kernel
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP) kernel
	$(BIN)/python benchmarks/run.py --quick

bench-half: $(STAMP)
	$(BIN)/python benchmarks/half_precision.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info $(KERNEL)
