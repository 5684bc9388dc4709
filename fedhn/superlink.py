"""A Flower simulation SuperLink owned by this process, driven through the ``flwr`` CLI.

``flwr run .`` starts a detached SuperLink that keeps running; fedhn's commands start their own on
a free port instead, in a private ``FLWR_HOME``, so that they can stop it, and everything it
started (the ServerApp process and Ray), by PID when they finish or fail.

Facts this relies on (Flower 1.42): the SuperLink serves all its APIs on one port; the ServerApp
and the Ray actors run with the SuperLink's working directory; the SuperExec it spawns leads its
own process group holding the ServerApp and Ray; ``flwr run`` exits 0 even when a run fails, so
the run's status comes from ``flwr ls``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["LocalSuperLink", "FlowerError", "flower_env", "free_port", "live_members"]

CONNECTION = "fedhn-local"


class FlowerError(RuntimeError):
    """A Flower process or command failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
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


class LocalSuperLink:
    """Start a simulation SuperLink on 127.0.0.1 (a context manager that stops it on exit).

    Args:
        workdir: working directory of the SuperLink, hence of the ServerApp and the ClientApps:
            relative paths in a run config resolve against it.
        port: the SuperLink's port (a free one by default).
        startup_timeout: seconds to wait for it to answer.
    """

    def __init__(self, workdir: str | Path = ".", port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.flwr_home = Path(tempfile.mkdtemp(prefix="fedhn-flwr-home-"))
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
        (self.flwr_home / "config.toml").write_text(
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        command = [
            _bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-file",
            str(self.log_file),
            "--disable-runtime-dependency-installation",
        ]
        self.process = subprocess.Popen(
            command,
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
            if self._healthy() and self.process.poll() is None:
                return
            time.sleep(0.2)
        self.stop()
        raise FlowerError(f"flower-superlink did not answer within {self.startup_timeout:.0f} s; see {self.log_file}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False

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
        _end_groups(self._groups, grace)
        self.process = None
        shutil.rmtree(self.flwr_home, ignore_errors=True)

    def process_groups(self) -> set[int]:
        """Process groups of the SuperExecs the SuperLink started (each holds a ServerApp and its Ray
        cluster); remembered, since they outlive the SuperLink if it dies."""
        if self.process is not None:
            self._groups |= {_process_group(child) for child in _children(self.process.pid)} - {None}
        return set(self._groups)

    def flwr(self, *args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this SuperLink."""
        return subprocess.run(
            [_bin("flwr"), *args], env=flower_env(self.flwr_home), cwd=cwd, capture_output=True, text=True
        )

    def submit(self, app: str | Path, run_config: str | Path, federation_config: Mapping[str, Any]) -> int:
        """Start a run of the Flower App at ``app`` with a run-config TOML file; return its run id."""
        federation = " ".join(f"{key}={value}" for key, value in federation_config.items())
        result = self.flwr(
            "run",
            str(app),
            CONNECTION,
            "--format",
            "json",
            "--run-config",
            str(run_config),
            "--federation-config",
            federation,
        )
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise FlowerError(f"flwr run failed: {(result.stderr or result.stdout).strip()[-2000:]}") from None
        if not reply.get("success"):
            raise FlowerError(f"flwr run failed: {reply.get('error-message', reply)}")
        return int(reply["run-id"])

    def status(self, run_id: int) -> dict[str, Any]:
        """The run's entry of ``flwr ls`` (status: starting, running, finished:completed|failed|stopped)."""
        result = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            return json.loads(result.stdout)["runs"][0]
        except (json.JSONDecodeError, KeyError, IndexError):
            raise FlowerError(f"flwr ls failed: {(result.stderr or result.stdout).strip()[-2000:]}") from None

    def wait(
        self, run_id: int, poll: float = 1.0, on_poll: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Wait until the run finishes; return its final status entry."""
        while True:
            self.process_groups()
            run = self.status(run_id)
            if on_poll is not None:
                on_poll(run)
            if run["status"].startswith("finished"):
                return run
            if self.process is None or self.process.poll() is not None:
                raise FlowerError(f"the SuperLink stopped while run {run_id} was {run['status']}; see {self.log_file}")
            time.sleep(poll)

    def log(self, run_id: int) -> str:
        """The run's whole log (ServerApp and ClientApp output)."""
        return self.flwr("log", str(run_id), CONNECTION, "--show").stdout


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def live_members(group: int) -> list[int]:
    """PIDs of the process group that are alive (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_groups(groups: set[int], grace: float) -> None:
    """SIGTERM each process group, then SIGKILL what is still alive after ``grace`` seconds."""
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(live_members(group) for group in groups):
        time.sleep(0.2)
    for group in groups:
        for pid in live_members(group):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
