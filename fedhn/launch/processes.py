"""Processes that lead their own process group, found and stopped by PID (never by name).

A process started with ``start_new_session`` leads a new process group; what it starts (a SuperExec's
ServerApp or ClientApps, Ray's daemons) stays in that group unless it makes its own. Linux does not
give a PID to a new process while it still names a live process group, so a group whose leader died
keeps its number while any member lives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Process", "children", "end_groups", "live_members", "process_group", "spawn", "stat_fields", "stop"]


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid``."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_group(pid: int) -> int | None:
    """The process group of ``pid``, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state [0], user and system CPU ticks [11] and
    [12], start time [19]), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def live_members(group: int) -> list[int]:
    """PIDs of the process group that are alive (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) and int(fields[2]) == group:
            if fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _wait_gone(groups: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(live_members(group) for group in groups):
        time.sleep(0.1)


def end_groups(groups: Iterable[int], grace: float) -> None:
    """SIGTERM each process group, then SIGKILL what is still alive after ``grace`` seconds, and
    wait (a few seconds at most) until the killed processes are gone."""
    groups = set(groups)
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _wait_gone(groups, grace)
    for group in groups:
        for pid in live_members(group):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _wait_gone(groups, 5.0)


@dataclass
class Process:
    """A process started by :func:`spawn`: it leads its own process group (its PID is the group's).

    ``started`` (start time since boot, in clock ticks) tells it from a later process that got the
    same PID, so a record read back from disk never stops someone else's process.
    """

    name: str
    pid: int
    started: int
    popen: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def members(self) -> list[int]:
        """Live PIDs of its process group; [] once the group is gone or the PID is someone else's."""
        fields = stat_fields(self.pid)
        if fields is not None and int(fields[19]) != self.started:
            return []
        return live_members(self.pid)

    def alive(self) -> bool:
        """Whether the process itself still runs (not a zombie)."""
        fields = stat_fields(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.started

    def reap(self, timeout: float = 5.0) -> None:
        """Collect its exit status if it is a child of this process (no zombie left behind)."""
        try:
            if self.popen is not None:
                self.popen.wait(timeout)
            else:  # read back from disk: a child of this process only if this process started it
                os.waitpid(self.pid, os.WNOHANG)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "started": self.started}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Process:
        return cls(data["name"], int(data["pid"]), int(data["started"]))


def spawn(name: str, command: Sequence[str], log_file: Path, cwd: Path, env: Mapping[str, str]) -> Process:
    """Start ``command`` in a new session (so it leads its own process group) with stdout and
    stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    fields = stat_fields(popen.pid)
    return Process(name, popen.pid, int(fields[19]) if fields else 0, popen)


def stop(processes: Sequence[Process], grace: float = 10.0) -> None:
    """Stop the process groups of ``processes`` (SIGTERM, then SIGKILL after ``grace`` s) and reap
    those that are children of this process."""
    end_groups([process.pid for process in processes if process.members()], grace)
    for process in processes:
        process.reap()
