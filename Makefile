# Everything a fresh machine needs: `make test` and `make example` create the
# virtualenv, install the package with its pinned extras, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
KERNEL := adam_optax/_adam_fused_cpu.so

.PHONY: install kernel test lint format docs example examples bench bench-quick bench-gpu bench-half \
	bench-buffers bench-lm bench-lm-quick bench-modern bench-claims bench-family bench-family-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,examples,dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

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

# In parallel (pytest-xdist): one worker per core, idle workers take queued tests from
# busy ones; the 15 slowest tests are listed at the end.
PYTEST_WORKERS ?= auto
test: lint kernel
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=15 \
		adam_optax tests README.md docs

# The site, into site/: warnings are errors, and the examples and parity tables
# are rerun (cached in build/docs-cache until their inputs change).
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -b html -W --keep-going -q docs site

example: $(STAMP)
	$(BIN)/python examples/regression.py

examples: $(STAMP)
	for f in examples/*.py; do $(BIN)/python $$f || exit 1; done

bench: $(STAMP) kernel
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP) kernel
	$(BIN)/python benchmarks/run.py --quick

# One step of adam, bucketed adam, quantized 8/4-bit adam and optax.adam on whatever
# device JAX finds, against that device's own bandwidth (benchmarks/device.py). Needs
# only jax and optax: it runs the virtualenv's Python if there is one, else python3
# (as on a machine with an accelerator and its own JAX). BENCH_ARGS=--quick: seconds.
BENCH_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
bench-gpu:
	$(BENCH_PYTHON) benchmarks/device.py $(BENCH_ARGS)

# The modern family (issue 18): each member's donated step on the transformer tree and its
# compile time at 1024 leaves, relative to adam's.
bench-modern: $(STAMP)
	$(BIN)/python benchmarks/modern.py

# The papers' claims that are measured rather than tested (a few minutes each on 2 cores).
bench-claims: $(STAMP)
	for f in benchmarks/claims_*.py; do $(BIN)/python $$f || exit 1; done

# "Which Adam?": every member on four tasks, learning rates swept, three seeds; writes
# docs/which_adam.md and its figures (docs/_static/workbench/). --quick: small, no docs.
bench-family: $(STAMP)
	$(BIN)/python benchmarks/workbench.py

bench-family-quick: $(STAMP)
	$(BIN)/python benchmarks/workbench.py --quick

bench-half: $(STAMP)
	$(BIN)/python benchmarks/half_precision.py

bench-buffers: $(STAMP) kernel
	$(BIN)/python benchmarks/fresh_buffers.py

# The language-model benchmark of quantized state and stochastic rounding (issue 9):
# needs torchao (the `bench` extra). The full run takes about an hour on 2 cores.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,examples,dev,bench]"
	touch $(BENCH_STAMP)

bench-lm: $(BENCH_STAMP)
	$(BIN)/python benchmarks/lm.py

bench-lm-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/lm.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist site *.egg-info docs/gallery docs/generated $(KERNEL) \
		adam_optax/*.not-built.txt
