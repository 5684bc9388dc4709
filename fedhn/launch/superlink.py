"""Flower SuperLinks owned by this process, driven through the ``flwr`` CLI.

``flwr run .`` starts a detached SuperLink that keeps running; fedhn's commands start their own on
a free port instead, in a private ``FLWR_HOME``, so that they can stop it, and everything it
started (the ServerApp process and Ray), by PID when they finish or fail.

Facts this relies on (Flower 1.42): the SuperLink serves its Fleet, Control and Runtime APIs on one
port; the ServerApp and the Ray actors run with the SuperLink's working directory; the SuperExec it
spawns leads its own process group holding the ServerApp and Ray; ``flwr run`` exits 0 even when a
run fails, so the run's status comes from ``flwr ls``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhn.launch.processes import children, end_groups, live_members, process_group

__all__ = [
    "Certificates",
    "FlowerConnection",
    "FlowerError",
    "LocalSuperLink",
    "flower_bin",
    "flower_env",
    "free_port",
    "live_members",
    "superlink_command",
    "superlink_ready",
]

CONNECTION = "fedhn-local"


class FlowerError(RuntimeError):
    """A Flower process or command failed."""


@dataclass(frozen=True)
class Certificates:
    """TLS files as ``scripts/make-certs.sh`` writes them into one directory: the CA certificate
    (given to SuperNodes, SuperExecs and ``flwr``) and the SuperLink's certificate and key."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    def missing(self) -> list[Path]:
        return [path for path in (self.ca, self.cert, self.key) if not path.is_file()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_bin(name: str) -> str:
    """A console script of this Python environment (flwr, flower-superlink, ...)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FlowerError(f"{name} is not installed in this environment; install fedhn with its dependencies")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: offline (no runtime dependency installation, no update
    check), this environment's scripts first on PATH, and the given FLWR_HOME."""
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
    )


def superlink_command(
    port: int,
    *,
    simulation: bool,
    certificates: Certificates | None = None,
    database: Path | None = None,
    supernode_auth: bool = False,
) -> list[str]:
    """``flower-superlink`` on 127.0.0.1:``port``: a simulation SuperLink that runs the ServerApp
    itself, or a deployment one whose ServerApp runs under a separate SuperExec (process isolation).
    Its state lives in memory, or in the SQLite file ``database``; with ``supernode_auth`` (which
    needs ``certificates``) it admits only SuperNodes whose public keys were registered with
    ``flwr supernode register``."""
    if supernode_auth and certificates is None:
        raise FlowerError("SuperNode authentication needs TLS: give the SuperLink certificates")
    mode = ["--simulation", "--isolation", "subprocess"] if simulation else ["--isolation", "process"]
    security = (
        ["--ssl-ca-certfile", str(certificates.ca), "--ssl-certfile", str(certificates.cert)]
        + ["--ssl-keyfile", str(certificates.key)]
        if certificates
        else ["--insecure"]
    )
    return [
        flower_bin("flower-superlink"),
        *mode,
        *security,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
        *(["--database", str(database)] if database else []),
        *(["--enable-supernode-auth"] if supernode_auth else []),
    ]


def superlink_ready(port: int, ca: Path | None = None) -> bool:
    """Whether the SuperLink on 127.0.0.1:``port`` answers its health check (over TLS with ``ca``)."""
    scheme, context = ("https", ssl.create_default_context(cafile=ca)) if ca else ("http", None)
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=0.5, context=context) as response:
            return response.status == 200
    except OSError:
        return False


class FlowerConnection:
    """The ``flwr`` CLI against one SuperLink: a named connection in ``FLWR_HOME/config.toml``."""

    def __init__(self, flwr_home: Path, name: str) -> None:
        self.flwr_home = flwr_home
        self.name = name

    def configure(self, address: str, root_certificates: Path | None = None) -> None:
        """Write the connection: TLS verified with ``root_certificates``, else insecure."""
        security = f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(f'[superlink.{self.name}]\naddress = "{address}"\n{security}\n')

    def flwr(self, *args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command with this connection's FLWR_HOME."""
        return subprocess.run(
            [flower_bin("flwr"), *args], env=flower_env(self.flwr_home), cwd=cwd, capture_output=True, text=True
        )

    def _json(self, what: str, *args: str) -> dict[str, Any]:
        result = self.flwr(*args, "--format", "json")
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise FlowerError(f"{what} failed: {(result.stderr or result.stdout).strip()[-2000:]}") from None
        if not reply.get("success"):
            raise FlowerError(f"{what} failed: {reply.get('error-message', reply)}")
        return reply

    def submit(
        self, app: str | Path, run_config: str | Path, federation_config: Mapping[str, Any] | None = None
    ) -> int:
        """Start a run of the Flower App at ``app`` with a run-config TOML file (and, for a
        simulation, a federation config); return its run id."""
        federation = " ".join(f"{key}={value}" for key, value in (federation_config or {}).items())
        extra = ["--federation-config", federation] if federation else []
        reply = self._json("flwr run", "run", str(app), self.name, "--run-config", str(run_config), *extra)
        return int(reply["run-id"])

    def status(self, run_id: int) -> dict[str, Any]:
        """The run's entry of ``flwr ls`` (status: starting, running, finished:completed|failed|stopped)."""
        try:
            return self._json("flwr ls", "ls", self.name, "--run-id", str(run_id))["runs"][0]
        except (KeyError, IndexError):
            raise FlowerError(f"flwr ls does not know run {run_id}") from None

    def supernodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink knows (``flwr supernode ls``)."""
        return self._json("flwr supernode ls", "supernode", "ls", self.name).get("nodes", [])

    def check_running(self, run_id: int, status: str) -> None:
        """Raise :class:`FlowerError` when what serves the run has stopped (nothing to check here)."""

    def wait(
        self,
        run_id: int,
        progress: Callable[[], bool] | None = None,
        poll: float = 0.2,
        status_every: float = 5.0,
    ) -> dict[str, Any]:
        """Wait until the run finishes; return its final status entry.

        ``progress()`` runs every ``poll`` s (e.g. reading the run's metrics.jsonl) and returns whether
        the run has recorded all its rounds; ``flwr ls`` (a Python process of its own, about a
        CPU-second each) runs only every ``status_every`` s and as soon as ``progress()`` says so, so
        that waiting does not slow the run it waits for.
        """
        last_status = -math.inf
        while True:
            done = progress() if progress is not None else False
            if done or time.monotonic() - last_status >= status_every:
                run = self.status(run_id)
                if run["status"].startswith("finished"):
                    return run
                self.check_running(run_id, run["status"])
                last_status = time.monotonic()
            time.sleep(poll)

    def log(self, run_id: int) -> str:
        """The run's whole log (ServerApp and ClientApp output)."""
        return self.flwr("log", str(run_id), self.name, "--show").stdout


class LocalSuperLink(FlowerConnection):
    """Start a simulation SuperLink on 127.0.0.1 (a context manager that stops it on exit).

    Args:
        workdir: working directory of the SuperLink, hence of the ServerApp and the ClientApps:
            relative paths in a run config resolve against it.
        port: the SuperLink's port (a free one by default).
        startup_timeout: seconds to wait for it to answer.
    """

    def __init__(self, workdir: str | Path = ".", port: int | None = None, startup_timeout: float = 30.0) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="fedhn-flwr-home-")), CONNECTION)
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_file = self.flwr_home / "superlink.log"
        self.process: subprocess.Popen | None = None
        self._groups: set[int] = set()  # process groups of the SuperExecs it started

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink and wait until it answers on its port."""
        self.configure(f"127.0.0.1:{self.port}")
        self.process = subprocess.Popen(
            [*superlink_command(self.port, simulation=True), "--log-file", str(self.log_file)],
            cwd=self.workdir,
            env=flower_env(self.flwr_home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FlowerError(f"flower-superlink exited with code {self.process.returncode}; see {self.log_file}")
            if superlink_ready(self.port) and self.process.poll() is None:
                return
            time.sleep(0.2)
        self.stop()
        raise FlowerError(f"flower-superlink did not answer within {self.startup_timeout:.0f} s; see {self.log_file}")

    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperLink, then the process groups it started (ServerApp, Ray); remove FLWR_HOME."""
        if self.process is None:
            return
        self.process_groups()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        end_groups(self._groups, grace)
        self.process = None
        shutil.rmtree(self.flwr_home, ignore_errors=True)

    def process_groups(self) -> set[int]:
        """Process groups of the SuperExecs the SuperLink started (each holds a ServerApp and its Ray
        cluster); remembered, since they outlive the SuperLink if it dies."""
        if self.process is not None:
            self._groups |= {process_group(child) for child in children(self.process.pid)} - {None}
        return set(self._groups)

    def check_running(self, run_id: int, status: str) -> None:
        self.process_groups()
        if self.process is None or self.process.poll() is not None:
            raise FlowerError(f"the SuperLink stopped while run {run_id} was {status}; see {self.log_file}")
