"""`fedhn deploy`: the docker-compose.yml topology as processes on 127.0.0.1, stopped by PID."""

import re
import time
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from fedhn.app.faults import draw_fault
from fedhn.launch.cli import app
from fedhn.launch.deploy import Deployment, start
from fedhn.launch.processes import live_members, stop
from tests.conftest import read_rounds

pytestmark = pytest.mark.deployment
PROJECT = Path(__file__).resolve().parent.parent
FAILING_SERVER = """
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    raise RuntimeError("deliberate failure for the test")
"""


@pytest.fixture
def state_dir(tmp_path):
    """The deployment's state directory; whatever the test leaves running there is stopped."""
    directory = tmp_path / "state"
    yield directory
    if (deployment := Deployment.load(directory)) is not None:
        deployment.stop()


def fedhn(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_two_supernodes_over_tls_run_two_rounds_and_deploy_down_stops_every_process(tmp_path, state_dir):
    up = fedhn("deploy", "up", "--nodes", "2", "--state-dir", str(state_dir), "--app", str(PROJECT))
    assert up.exit_code == 0, up.output
    deployment = Deployment.load(state_dir)
    assert [p.name for p in deployment.processes] == [
        "superlink",
        "superexec-serverapp",
        "supernode-0",
        "superexec-clientapp-0",
        "supernode-1",
        "superexec-clientapp-1",
    ]
    assert deployment.certificates is not None and f"127.0.0.1:{deployment.port}" in up.output
    assert len(deployment.connection.supernodes()) == 2

    out = tmp_path / "out"
    run = fedhn(
        "deploy",
        "run",
        "--state-dir",
        str(state_dir),
        "--app",
        str(PROJECT),
        "--out",
        str(out),
        "-c",
        "num-server-rounds=2 batch-sizes='32'",
    )
    assert run.exit_code == 0, run.output
    (run_dir,) = out.iterdir()
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["clients"] == 2 and r["failed"] == 0 for r in rounds)
    assert rounds[-1]["test_accuracy"] > 0.5  # digits, 10 classes: learning happened
    assert "round 2/2" in run.output and "Using SuperLink: fedhn-deploy" in (run_dir / "flower.log").read_text()
    assert not deployment.dead(), "a run leaves the deployment of `deploy up` running"

    down = fedhn("deploy", "down", "--state-dir", str(state_dir))
    assert down.exit_code == 0, down.output
    assert not any(live_members(process.pid) for process in deployment.processes)
    assert Deployment.load(state_dir) is None


def test_a_failed_run_is_reported_and_its_throwaway_deployment_stopped(tmp_path, state_dir):
    app_dir = tmp_path / "app"
    (app_dir / "failing").mkdir(parents=True)
    (app_dir / "failing" / "server.py").write_text(FAILING_SERVER)
    pyproject = (PROJECT / "pyproject.toml").read_text()
    (app_dir / "pyproject.toml").write_text(pyproject.replace('"fedhn.server_app:app"', '"failing.server:app"'))
    result = fedhn(
        "deploy",
        "run",
        "--insecure",
        "--state-dir",
        str(state_dir),
        "--app",
        str(app_dir),
        "--out",
        str(tmp_path / "out"),
        "-c",
        "num-server-rounds=1",
    )
    assert result.exit_code == 1
    assert "run FAILED: finished:failed" in result.output and "deliberate failure for the test" in result.output
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", result.output)]
    assert len(pids) == 6 and not any(live_members(pid) for pid in pids)
    assert Deployment.load(state_dir) is None


def test_deploy_status_and_down_without_a_deployment(state_dir):
    assert fedhn("deploy", "status", "--state-dir", str(state_dir)).exit_code == 1
    down = fedhn("deploy", "down", "--state-dir", str(state_dir))
    assert down.exit_code == 0 and "no deployment" in down.output


@pytest.mark.slow  # the simulation's fault tests (test_reliability.py) cover the same round logic in make test
def test_a_killed_supernode_and_a_hanging_client_leave_the_run_going(tmp_path, state_dir):
    """Three SuperNodes; SuperNode 2 is killed after round 1 and, in round 2, one of the others replies only after
    the round timeout: the run completes with the remaining node, records why clients failed, loses no round."""
    kinds, rate = ("hang",), 0.3
    seed = next(
        s
        for s in range(1000)
        if not any(draw_fault(s, p, 1, rate, kinds) for p in range(3))
        and sorted(str(draw_fault(s, p, 2, rate, kinds)) for p in range(2)) == ["None", "hang"]
    )
    deployment = start(state_dir, nodes=3, workdir=tmp_path)
    out = tmp_path / "run"
    config = {"num-server-rounds": 2, "min-train-nodes": 1, "round-timeout": 40.0, "fault-rate": rate, "seed": seed}
    (tmp_path / "run.toml").write_text(
        tomli_w.dumps(config | {"fault-kinds": "hang", "batch-sizes": "32", "out-dir": str(out)})
    )
    run_id = deployment.connection.submit(PROJECT, tmp_path / "run.toml")
    deadline = time.monotonic() + 180
    while not (out / "metrics.jsonl").is_file():
        assert time.monotonic() < deadline, "round 1 did not finish in 180 s"
        assert not deployment.connection.status(run_id)["status"].startswith("finished"), "the run ended early"
        time.sleep(0.5)
    stop([p for p in deployment.processes if p.name in ("supernode-2", "superexec-clientapp-2")], grace=0)
    assert deployment.connection.wait(run_id)["status"] == "finished:completed"
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["clients"] == 3
    # Node 2 is gone (dropped after the timeout, or no longer sampled) and another one hung.
    assert rounds[1]["clients"] == 1
    assert "no reply within the round timeout" in " ".join(rounds[1]["failures"].values())
    assert (out / "model.pt").is_file()
