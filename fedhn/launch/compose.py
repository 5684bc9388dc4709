"""``docker compose`` on the app's compose files: one project (its containers, network and volumes),
built, started, inspected, partly killed and removed through the Docker CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Compose", "ComposeError", "pip_cert"]


class ComposeError(RuntimeError):
    """A ``docker`` or ``docker compose`` command failed."""


def pip_cert() -> str | None:
    """The CA bundle this machine's pip trusts (``PIP_CERT``, else the ``cert`` of ``pip config
    list``), for pip inside an image build; None when pip has none."""
    if os.environ.get("PIP_CERT"):
        return os.environ["PIP_CERT"]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    certs = [
        line.split("=", 1)[1].strip("'\" ") for line in listed.splitlines() if line.split("=")[0].endswith(".cert")
    ]
    return next((cert for cert in certs if Path(cert).is_file()), None)


@dataclass
class Compose:
    """A compose project of the app in ``app_dir``: the given compose ``files`` with variables ``env``
    (FEDHN_CERTIFICATES, SUPERLINK_PORT, ...) on top of this process's environment."""

    app_dir: Path
    project: str
    files: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``docker compose ARGS`` for this project; raise :class:`ComposeError` if it fails and ``check``."""
        if shutil.which("docker") is None:
            raise ComposeError("the docker CLI is not installed (Debian: apt-get install docker.io)")
        files = [arg for name in self.files for arg in ("-f", str(self.app_dir / name))]
        command = ["docker", "compose", "--project-directory", str(self.app_dir), "-p", self.project, *files, *args]
        result = subprocess.run(command, env=os.environ | self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise ComposeError(f"docker compose {' '.join(args)} failed: {(result.stderr or result.stdout)[-3000:]}")
        return result

    def engine(self) -> str:
        """The Docker engine's version; raise :class:`ComposeError`, saying how to get one, when none answers."""
        self("version")  # the CLI and its compose plugin
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
        if info.returncode != 0 or not info.stdout.strip():
            raise ComposeError(
                f"no Docker engine answers ({(info.stderr or info.stdout).strip()[-300:]}): start one "
                "(as root: eval $(scripts/docker-engine.sh start); export DOCKER_HOST) or set DOCKER_HOST"
            )
        return info.stdout.strip()

    def image(self) -> str:
        """The image every service runs (``image`` of docker-compose.yml, with its tag resolved)."""
        return self("config", "--images").stdout.split()[0]

    def image_size(self) -> int:
        """The size of :meth:`image` in bytes, as ``docker image ls`` counts it."""
        inspected = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", self.image()], capture_output=True, text=True
        )
        if inspected.returncode != 0:
            raise ComposeError(f"docker image inspect {self.image()} failed: {inspected.stderr.strip()}")
        return int(inspected.stdout)

    def logs(self, service: str) -> str:
        """Everything the service's containers printed so far."""
        return self("logs", "--no-log-prefix", service).stdout

    def resources(self) -> list[str]:
        """The project's containers, networks and volumes that exist (by their compose label)."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in ("container", "network", "volume"):
            listed = subprocess.run(
                ["docker", kind, "ls", *(["--all"] if kind == "container" else []), "--quiet", "--filter", label],
                capture_output=True,
                text=True,
            )
            found += [f"{kind} {name}" for name in listed.stdout.split()]
        return found

    def down(self) -> None:
        """Remove the project's containers, network and volumes (``down -v``)."""
        self("down", "--volumes", "--remove-orphans", "--timeout", "10")
