# Two commands do everything on a fresh machine (python3 + make): `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean

# Editable install in "compat" mode: a plain .pth path entry. The default import-hook
# finder costs ~50 ms on every interpreter start, which every `ticketgate pipe` pays.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ticketgate db upgrade
	$(BIN)/ticketgate serve -v

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# `make bench scaleout shapes` runs those benchmarks (all without a name); options go in
# BENCH_ARGS, e.g. BENCH_ARGS="--messages=2000". The names are not targets of their own.
ifeq (bench,$(firstword $(MAKECMDGOALS)))
BENCH_NAMES := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
$(eval $(BENCH_NAMES):;@:)
endif

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_NAMES) $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
