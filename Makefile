# `make test` is the project's test command (README, .ci/run): it creates or updates the virtual
# environment, installs fedhn with its dev extra, and runs pytest.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedhn-installed

.PHONY: install test lint compare

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job: BN / GN / HN on the embedded digits, 10 clients with batch sizes 2..128.
compare: install
	$(BIN)/fedhn compare --norms bn,gn_g4,hn --run-config configs/quickstart.toml --out outputs/quickstart
