"""A Flower simulation on an existing Ray cluster: a head started with `ray start --head` on
127.0.0.1, the simulation pointed at it with RAY_ADDRESS (README, "Multi-node")."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from fedhn.launch.processes import live_members, spawn, stop
from fedhn.launch.superlink import free_port
from tests.conftest import compare, read_rounds

pytestmark = [pytest.mark.simulation, pytest.mark.ray_cluster]


@pytest.fixture
def ray_head(monkeypatch):
    """A Ray head on 127.0.0.1 with 2 CPUs and a temp dir of its own (so that no other ray.init()
    finds it); its daemons stay in the process group of `ray start`, stopped by PID afterwards.
    Yields its address and its temp dir."""
    # Ray swaps 127.0.0.1 for the machine's address unless told the cluster is this machine alone;
    # the simulation's Ray driver must be told too, hence os.environ.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    temp_dir = Path(tempfile.mkdtemp(prefix="fedhn-ray-"))  # short: Ray's socket paths are length-limited
    port = free_port()
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1"]
    command += ["--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp_dir)]
    command += ["--ray-client-server-port", str(free_port()), "--dashboard-port", str(free_port())]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    head = spawn("ray-head", command, temp_dir / "ray-start.log", temp_dir, os.environ)
    try:
        assert head.popen.wait(timeout=120) == 0, (temp_dir / "ray-start.log").read_text()
        assert live_members(head.pid), "ray start left no daemon in its process group"
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        stop([head], grace=5)  # gcs_server ignores SIGTERM: it is SIGKILLed after the grace
        assert not live_members(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path, monkeypatch):
    address, temp_dir = ray_head
    monkeypatch.setenv("RAY_ADDRESS", address)  # the SuperLink, hence the simulation, inherits it
    result = compare(tmp_path, "hn", "--num-supernodes", "2", "--run-config", "num-server-rounds=2 batch-sizes='32'")
    assert result.exit_code == 0, result.output
    rounds = read_rounds(tmp_path / "hn")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["clients"] == 2 for r in rounds)
    # The run used the head: the simulation's Ray driver and the workers of its job (the ClientApp
    # actors) logged into the head's session; a Ray of its own would have logged elsewhere.
    (session,) = temp_dir.glob("session_2*")
    assert list((session / "logs").glob("python-core-driver-*.log"))
    assert list((session / "logs").glob("worker-*-01000000-*.out"))
