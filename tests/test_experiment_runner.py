"""experiments.reproduce.run_groups, which experiments.converged uses too: a signal to the experiment stops
the command it is running (fedhn compare then stops what it started) and exits 128 + the signal."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from experiments.reproduce import ROOT

RUNNER = textwrap.dedent(
    """
    import sys
    import experiments.reproduce as reproduce

    child = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)", sys.argv[1]]
    reproduce.run_group = lambda group: reproduce.call(child)
    reproduce.run_groups(["a group"])
    """
)


def test_sigterm_to_the_experiment_stops_the_running_command_and_exits_143(tmp_path):
    pid_file = tmp_path / "child.pid"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(pid_file)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline and runner.poll() is None, runner.stderr.read()
        time.sleep(0.05)
    child = int(pid_file.read_text())
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in runner.stderr.read()
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"the command (pid {child}) still runs after the experiment stopped")
