"""Commands that start processes stop them, say what finished and how to resume, on SIGTERM, SIGINT and SIGHUP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedhn.launch.processes import children, live_members, process_group
from fedhn.launch.signals import Stopped, stopped_by_signals

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_raises_stopped_once_and_the_handlers_come_back(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Stopped) as info, stopped_by_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
    assert info.value.exit_code == 128 + signum and signal.Signals(signum).name in str(info.value)
    assert signal.getsignal(signum) == before


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.simulation
@pytest.mark.parametrize(  # Ctrl-C in make test; the others take the same path (make test-slow)
    "signum",
    [
        signal.SIGINT,
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
    ],
)
def test_compare_stops_everything_it_started_on_a_signal(tmp_path, signum):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fedhn.launch.cli", "compare", "--norms", "bn", "--num-supernodes", "2"]
    command += ["-c", "num-server-rounds=40", "--out", str(out), "--app", str(PROJECT)]
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"))
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "bn" / "metrics.jsonl").is_file():
            assert process.poll() is None and time.monotonic() < deadline, "no round finished"
            time.sleep(0.5)
        started = _descendants(process.pid)
        groups = {process_group(pid) for pid in started} - {None, process_group(process.pid)}
        assert groups, "the SuperLink and the simulation run in their own process groups"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "bn: " in stderr and "(interrupted)" in stderr
    resume = next(line for line in stderr.splitlines() if line.startswith("Resume: fedhn compare "))
    assert f"--out {out}" in resume and resume.endswith(" --resume")
    assert not any(live_members(group) for group in groups)
