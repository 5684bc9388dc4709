"""docker-compose.yml + the TLS overlay on a real Docker engine (marker docker, only with --docker:
`make test-docker`): the image built on a Debian base made with debootstrap, 2 SuperNodes, one
killed in the middle of round 1, the run finished by the other, the results out of the volume."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from fedhn.app import task
from fedhn.app.config import RunConfig
from fedhn.app.results import read_results
from fedhn.launch.docker_demo import KILLED, NODES, RUN_CONFIG, run_demo
from fedhn.training import evaluate

pytestmark = pytest.mark.docker
PROJECT = Path(__file__).resolve().parent.parent
DEBIAN_IMAGE = "fedhn-debian:bookworm"
# Docker Hub is out of reach here: Flower's layout from Debian's packages, torch from the default index.
BUILD_ARGS = ["BASE_IMAGE=flower-on-debian", f"DEBIAN_IMAGE={DEBIAN_IMAGE}", "TORCH_INDEX_URL="]


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docker_engine():
    """A Docker engine: the one DOCKER_HOST names if it answers, else a dockerd started by
    scripts/docker-engine.sh and stopped by its PID afterwards (only if this fixture started it)."""
    if _engine_answers():
        yield
        return
    started = subprocess.run(
        ["bash", str(PROJECT / "scripts" / "docker-engine.sh"), "start"], capture_output=True, text=True
    )
    if started.returncode != 0:
        pytest.skip(f"no Docker engine answers and none could be started: {started.stderr.strip()[-500:]}")
    values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = values["DOCKER_HOST"]
    try:
        yield
    finally:
        if "FEDHN_DOCKERD_PID" in values:
            subprocess.run(["bash", str(PROJECT / "scripts" / "docker-engine.sh"), "stop"], check=True)
        if previous is None:
            os.environ.pop("DOCKER_HOST")
        else:
            os.environ["DOCKER_HOST"] = previous


def test_a_killed_supernode_container_leaves_the_run_going_and_the_results_come_out_of_the_volume(
    docker_engine, tmp_path
):
    subprocess.run(["bash", str(PROJECT / "scripts" / "docker-base.sh"), DEBIAN_IMAGE], check=True)
    result = run_demo(PROJECT, tmp_path, BUILD_ARGS)
    print(result.record())

    assert result.killed_mid_round, f"{KILLED} had replied before it was killed"
    assert result.status == "finished:completed"
    assert result.published == f"127.0.0.1:{result.port}"
    rounds = result.rounds
    assert [line["round"] for line in rounds] == list(range(1, RUN_CONFIG["num-server-rounds"] + 1))
    # Round 1: partition 0's node trained; partition 1's was killed and recorded with the reason.
    first = rounds[0]
    assert (first["clients"], first["failed"]) == (NODES - 1, 1)
    # The SuperLink saw the node miss its heartbeats (2 x 30 s) long before the round timeout.
    [(client, reason)] = first["failures"].items()
    assert client.startswith("client 1 (node ") and reason.startswith("error: Error: Node Unavailable"), reason
    # Later rounds: the SuperLink holds the node offline and the run goes on with the other one alone.
    assert all((line["clients"], line["failed"]) == (NODES - 1, 0) for line in rounds[1:])

    # model.pt is the final global model: on the host it scores what the ServerApp recorded.
    config = RunConfig.from_mapping(read_results(result.results).run_config)
    model = task.new_model(config)
    model.load_state_dict(torch.load(result.results / "model.pt", weights_only=True))
    images, labels = task.test_data(config)
    _, accuracy = evaluate(model, images, labels)
    assert accuracy == pytest.approx(rounds[-1]["test_accuracy"], abs=2 / len(labels))

    assert result.left == [], "docker compose down -v left these behind"
