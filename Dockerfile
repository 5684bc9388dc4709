# The fedhn app image, used by every service of docker-compose.yml: Flower's SuperExec image (which
# holds flwr, hence flower-superlink and flower-supernode too) plus fedhn's dependencies, with
# CPU-only PyTorch. fedhn's own code is not in the image: `flwr run` sends it to the SuperExecs in
# the FAB.
#   docker compose build                 (BuildKit; `docker compose up --build` builds it too)
#
# Build arguments:
#   BASE_IMAGE       the image to build on: Flower's flwr/superexec (default), or `flower-on-debian`,
#                    the stage below, which builds the same layout from Debian's packages
#   DEBIAN_IMAGE     that stage's Debian (bookworm): e.g. the image of scripts/docker-base.sh
#   TORCH_INDEX_URL  where pip gets torch and torchvision; empty: the default index (PyPI's torch is a
#                    CUDA build of several GB, which runs on CPUs too)
# pip trusts the CA bundle of the build secret `pip-cert` when one is given (docker-compose.yml takes
# it from FEDHN_PIP_CERT); the secret is mounted only while pip runs, never stored in the image.
ARG FLWR_VERSION=1.42.0
ARG BASE_IMAGE=flwr/superexec:${FLWR_VERSION}
ARG DEBIAN_IMAGE=debian:bookworm-slim

# Flower's base layout from Debian's packages: a virtual environment in /python/venv owned by the
# user app (uid 49999) and on PATH, flwr at FLWR_VERSION, working directory /app.
FROM ${DEBIAN_IMAGE} AS flower-on-debian
ARG FLWR_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 49999 app \
    && python3 -m venv /python/venv && mkdir /app && chown -R app:app /python /app
ENV PATH=/python/venv/bin:$PATH
USER app
WORKDIR /app
RUN --mount=type=secret,id=pip-cert,mode=0444 \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -m pip install --no-cache-dir "flwr==${FLWR_VERSION}"

# The dependencies of pyproject.toml but flwr, which the base image holds at FLWR_VERSION (and
# flwr[simulation] would add Ray, which a deployment does not use).
FROM ${BASE_IMAGE} AS requirements
COPY --chown=app:app pyproject.toml /tmp/fedhn/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/fedhn/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('flwr[')))" > /tmp/fedhn/requirements.txt

FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
# A C compiler with OpenMP: fedhn builds its fused HN kernel at first use (without one it warns and
# takes the slower general path).
USER root
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libgomp1 \
    && rm -rf /var/lib/apt/lists/*
USER app
RUN --mount=type=secret,id=pip-cert,mode=0444 \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -m pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch torchvision

# Copied from the stage above by content: an edit of pyproject.toml that keeps the dependencies keeps
# this layer cached.
COPY --from=requirements --chown=app:app /tmp/fedhn/requirements.txt /tmp/fedhn/requirements.txt
RUN --mount=type=secret,id=pip-cert,mode=0444 \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -m pip install --no-cache-dir -r /tmp/fedhn/requirements.txt

# Owned by the image's user (app), so the named volumes mounted here are writable.
RUN mkdir -p /app/outputs /app/state /app/data
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
