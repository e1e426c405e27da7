# lightning-o2nc: every target creates .venv on first use and installs the project into it (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-min bench bench-quick lint format clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/o2nc-sweep --config configs/sweeps/digits.yaml --logdir runs/demo

test: $(STAMP)
	$(BIN)/pytest -n 2 --timeout 600 tests

# test-min: the Lightning and sweep tests in a separate venv holding the lower bounds that
# pyproject.toml states for lightning (and pytorch-lightning at the same version), optuna and
# optuna-integration; everything else resolves as usual.
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
MIN_PACKAGES := lightning pytorch-lightning optuna optuna-integration

$(MIN_STAMP): pyproject.toml .ci/lower_bounds.py
	test -d $(MIN_VENV) || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet -e '.[dev]' $$($(PYTHON) .ci/lower_bounds.py $(MIN_PACKAGES))
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/pip list 2>/dev/null | grep -iE '^(torch|lightning|pytorch-lightning|optuna|optuna-integration) '
	$(MIN_VENV)/bin/pytest -n 2 --timeout 600 tests/lightning tests/sweeps

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MIN_VENV) runs .pytest_cache
