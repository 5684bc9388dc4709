"""SuperNode authentication in `fedhn deploy`: registered SuperNodes train, others are refused."""

import time
from pathlib import Path

import pytest

from fedhn.launch.deploy import Deployment, make_node_keys
from fedhn.launch.processes import Process, spawn, stop
from fedhn.launch.superlink import flower_bin, flower_env, free_port, superlink_ready
from tests.conftest import read_rounds
from tests.test_deploy import PROJECT, fedhn, state_dir  # noqa: F401 (state_dir: the fixture)

pytestmark = pytest.mark.deployment
STARTED_CLIENTAPP = "Start `flwr-clientapp` process"  # a SuperExec's log line when it got a message


def cmdline(process: Process) -> list[str]:
    return Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")[:-1]


def start_intruder(deployment: Deployment, name: str, *key: str) -> list[Process]:
    """A SuperNode posing as node 0 (with ``key``: --auth-supernode-private-key FILE, or none) and
    the SuperExec that would run its ClientApps."""
    port, directory = free_port(), deployment.state_dir
    supernode = [flower_bin("flower-supernode"), "--superlink", deployment.address, "--isolation", "process"]
    supernode += ["--root-certificates", str(deployment.certificates.ca), "--host", "127.0.0.1", "--port", str(port)]
    supernode += ["--node-config", f"partition-id=0 num-partitions={len(deployment.node_ports)}", *key]
    superexec = [flower_bin("flower-superexec"), "--runtime-api-address", f"127.0.0.1:{port}", "--insecure"]
    return [
        spawn(name, supernode, directory / f"{name}.log", directory, flower_env(directory / name)),
        spawn(f"{name}-superexec", superexec, directory / f"{name}-superexec.log", directory, flower_env(directory)),
    ]


def online(deployment: Deployment) -> set[str]:
    """IDs of the SuperNodes that the SuperLink has online."""
    return {node["node-id"] for node in deployment.connection.supernodes() if node["status"] == "online"}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.5)


def test_registered_supernodes_train_and_unregistered_or_keyless_ones_are_refused(tmp_path, state_dir):  # noqa: F811
    up = fedhn("deploy", "up", "--nodes", "2", "--state-dir", str(state_dir), "--app", str(PROJECT))
    assert up.exit_code == 0, up.output
    assert "SuperNode authentication on" in up.output
    deployment = Deployment.load(state_dir)
    superlink = cmdline(deployment.processes[0])
    assert "--enable-supernode-auth" in superlink and superlink[superlink.index("--database") + 1].startswith(
        str(state_dir.resolve())
    )
    registered = online(deployment)
    assert len(registered) == 2

    unregistered_key = make_node_keys(PROJECT, tmp_path / "intruder-keys", 1).private(0)
    intruders = start_intruder(deployment, "unregistered", "--auth-supernode-private-key", str(unregistered_key))
    intruders += start_intruder(deployment, "keyless")
    try:
        wait_for(lambda: not intruders[0].alive() and not intruders[2].alive(), 60, "the intruders did not exit")
        refusals = {
            "unregistered": "Failed to activate SuperNode",  # its public key is not registered
            "keyless": "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.",
        }
        for name, refusal in refusals.items():
            log = (state_dir / f"{name}.log").read_text()
            assert refusal in log and "could not establish a connection to the SuperLink" in log, log
        superlink_log = (state_dir / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in superlink_log and "ApiError:2001" in superlink_log

        out = tmp_path / "out"
        run = fedhn(
            *("deploy", "run", "--state-dir", str(state_dir), "--app", str(PROJECT), "--out", str(out)),
            *("-c", "num-server-rounds=1 batch-sizes='32'"),
        )
        assert run.exit_code == 0, run.output
        (run_dir,) = out.iterdir()
        (round_1,) = read_rounds(run_dir)
        assert round_1["clients"] == 2 and round_1["failed"] == 0
        assert {node["node-id"] for node in deployment.connection.supernodes()} == registered
        for index in range(2):
            assert STARTED_CLIENTAPP in (state_dir / f"superexec-clientapp-{index}.log").read_text()
        for name in refusals:  # their SuperExecs never got a message, hence never the model
            assert STARTED_CLIENTAPP not in (state_dir / f"{name}-superexec.log").read_text()

        # The registrations live in the SuperLink's database: a restarted SuperLink admits the same nodes.
        stop(deployment.processes[:1])
        deployment.processes[0] = spawn(
            "superlink", superlink, state_dir / "superlink.log", PROJECT, flower_env(state_dir / "superlink")
        )
        deployment.save()
        wait_for(lambda: superlink_ready(deployment.port, deployment.certificates.ca), 30, "no SuperLink")
        wait_for(lambda: online(deployment) == registered, 60, "the registered SuperNodes did not come back")
    finally:
        stop(intruders)
