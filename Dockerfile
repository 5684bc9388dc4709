# The fedhn app image, used by every service of docker-compose.yml: Flower's SuperExec image (which
# holds flwr, hence flower-superlink and flower-supernode too) plus fedhn's dependencies, with
# CPU-only PyTorch. fedhn's own code is not in the image: `flwr run` sends it to the SuperExecs in
# the FAB.
#   docker build -t fedhn-app .        (docker compose builds it for you)
ARG FLWR_VERSION=1.42.0
FROM flwr/superexec:${FLWR_VERSION}

WORKDIR /app
# A C compiler with OpenMP: fedhn builds its fused HN kernel at first use (without one it warns and
# takes the slower general path).
USER root
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libgomp1 \
    && rm -rf /var/lib/apt/lists/*
USER app
# CPU wheels; PyPI's default torch is a CUDA build of several GB.
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch torchvision

# The dependencies of pyproject.toml but flwr, which the base image holds at FLWR_VERSION (and
# flwr[simulation] would add Ray, which a deployment does not use).
COPY --chown=app:app pyproject.toml /tmp/fedhn/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/fedhn/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('flwr[')))" > /tmp/fedhn/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/fedhn/requirements.txt

# Owned by the image's user (app), so the named volumes mounted here are writable.
RUN mkdir -p /app/outputs /app/state /app/data
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
