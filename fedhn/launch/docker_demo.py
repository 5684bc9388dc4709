"""The multi-node demo on a Docker engine: ``docker-compose.yml`` with the TLS overlay (a SuperLink,
the ServerApp's SuperExec, 2 SuperNodes with their SuperExecs, one container each), the SuperLink
published on 127.0.0.1 only; ``flwr run APP fedhn-docker`` for 2 rounds with ``min-train-nodes = 1``;
SuperNode 1's container killed while it trains round 1; the run's results copied out of the
``results`` volume; then ``docker compose down -v``.

``make docker-demo`` runs it (``python -m fedhn.launch.docker_demo``); ``tests/test_docker.py``
checks what it returns.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from fedhn.launch.compose import Compose, ComposeError, pip_cert
from fedhn.launch.deploy import make_certificates
from fedhn.launch.signals import Stopped, stopped_by_signals
from fedhn.launch.superlink import FlowerConnection, FlowerError, free_port

__all__ = ["DemoResult", "main", "run_demo"]

CONNECTION = "fedhn-docker"
PROJECT = "fedhn-demo"
FILES = ["docker-compose.yml", "docker-compose.tls.yml"]
NODES = 2
KILLED = "supernode-1"
RUN_NAME = "docker-demo"  # out-dir outputs/<RUN_NAME>: /app/outputs of superexec-serverapp is the results volume
# The killed node is dropped once the SuperLink sees it miss its heartbeats (about a minute); the
# round timeout bounds the live node, whose round took over 3 minutes on a loaded 2-core machine
# (load average 21: a new ClientApp process per message, importing torch). Batch 32: few steps.
RUN_CONFIG = {
    "num-server-rounds": 2,
    "min-train-nodes": 1,
    "round-timeout": 420.0,
    "batch-sizes": "32",
    "out-dir": f"outputs/{RUN_NAME}",
}
RECEIVED, SENT = "Receiving: train message", "Sending: train message"  # what flower-supernode logs
POLL = 0.5  # seconds between looks at the logs
STATUS_POLLS = 10  # looks at the logs per `flwr ls` (a CPU-second each)


@dataclass
class DemoResult:
    """What the demo saw: ``rounds`` (the lines of metrics.jsonl), ``results`` (the run's directory,
    copied out of the volume), whether the killed SuperNode had received its round-1 train message
    but not replied when it was killed, the run's final status, the figures of the run, and the
    project's containers, networks and volumes left after ``down -v``. ``published`` is where Docker
    published the SuperLink's port (``docker compose port``), asked for on 127.0.0.1:``port``."""

    rounds: list[dict]
    results: Path
    killed_mid_round: bool
    status: str
    port: int
    published: str
    build_seconds: float
    image_size: int
    run_seconds: float
    left: list[str]

    def record(self) -> str:
        """The run's line for the README."""
        return (
            f"{datetime.now(UTC):%Y-%m-%d}: image {self.image_size / 2**30:.1f} GiB, build {self.build_seconds:.0f} s, "
            f"up + run of {len(self.rounds)} rounds {self.run_seconds:.0f} s, status {self.status}"
        )


def _demo_compose(app_dir: Path, work_dir: Path, port: int) -> Compose:
    """The demo's compose project: certificates (made with scripts/make-certs.sh) and an empty data
    directory in ``work_dir``, the SuperLink on 127.0.0.1:``port``, the CA bundle pip trusts for the
    image build."""
    certificates = make_certificates(app_dir, work_dir / "certificates")
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    env = {
        "FEDHN_CERTIFICATES": str(certificates.directory),
        "FEDHN_DATA": str(work_dir / "data"),
        "FEDHN_NODES": str(NODES),
        "SUPERLINK_BIND": "127.0.0.1",
        "SUPERLINK_PORT": str(port),
    }
    if cert := pip_cert():
        env["FEDHN_PIP_CERT"] = cert
    return Compose(app_dir, PROJECT, FILES, env)


def run_demo(app_dir: Path, work_dir: Path, build_args: list[str], echo: Callable[[str], None] = print) -> DemoResult:
    """Build the image (``docker compose build`` with ``build_args``, e.g. ``BASE_IMAGE=...``), bring
    the deployment up, run, kill SuperNode 1 in round 1, copy the results to ``work_dir/results``,
    and remove the deployment (also when something fails)."""
    app_dir, work_dir = app_dir.resolve(), work_dir.resolve()
    port = free_port()
    compose = _demo_compose(app_dir, work_dir, port)
    echo(f"Docker engine {compose.engine()}")
    started = time.monotonic()
    compose("build", *[arg for build_arg in build_args for arg in ("--build-arg", build_arg)], "superlink")
    build_seconds = time.monotonic() - started
    image_size = compose.image_size()
    echo(f"image {compose.image()}: {image_size / 2**30:.1f} GiB, build {build_seconds:.0f} s")
    connection = FlowerConnection(work_dir / "flwr-home", CONNECTION)
    connection.configure(f"127.0.0.1:{port}", Path(compose.env["FEDHN_CERTIFICATES"]) / "ca.crt")
    try:
        compose("up", "--detach", "--no-build")
        started = time.monotonic()
        status, killed_mid_round, published = _run(compose, connection, app_dir, work_dir, echo)
        run_seconds = time.monotonic() - started
        results = _copy_results(compose, work_dir)
    finally:
        compose.down()
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    return DemoResult(
        rounds,
        results,
        killed_mid_round,
        status,
        port,
        published,
        build_seconds,
        image_size,
        run_seconds,
        compose.resources(),
    )


def _run(
    compose: Compose, connection: FlowerConnection, app_dir: Path, work_dir: Path, echo: Callable[[str], None]
) -> tuple[str, bool, str]:
    """Submit the run once every SuperNode is online, kill SuperNode 1 in round 1, wait for the end;
    return the run's final status, whether the kill came between SuperNode 1's train message and
    its reply, and where the SuperLink's port is published."""
    _wait(lambda: _online(connection) >= NODES, 180, "the SuperNodes were not online", compose)
    published = compose("port", "superlink", "8000").stdout.strip()
    run_toml = work_dir / "run-config.toml"
    run_toml.write_text(tomli_w.dumps(RUN_CONFIG))
    run_id = connection.submit(app_dir, run_toml)
    echo(f"run {run_id}: {NODES} SuperNodes online; {json.dumps(RUN_CONFIG)}")
    polls = itertools.count(1)

    def received() -> bool:
        return _received(compose, connection, run_id, ask_status=next(polls) % STATUS_POLLS == 0)

    _wait(received, 600, f"{KILLED} received no train message", compose)
    killed_mid_round = SENT not in compose.logs(KILLED)
    compose("kill", KILLED)
    echo(f"killed {KILLED} " + ("in the middle of round 1" if killed_mid_round else "after it replied in round 1"))
    status = connection.wait(run_id)["status"]
    echo(f"run {run_id}: {status}")
    if status != "finished:completed":
        raise FlowerError(f"run {run_id} {status}; its log:\n{connection.log(run_id)[-3000:]}")
    return status, killed_mid_round, published


def _received(compose: Compose, connection: FlowerConnection, run_id: int, ask_status: bool) -> bool:
    """Whether SuperNode 1 has received its train message; with ``ask_status``, raise
    :class:`FlowerError` with the run's log when the run ended without sending it one."""
    if RECEIVED in compose.logs(KILLED):
        return True
    if ask_status and (status := connection.status(run_id)["status"]).startswith("finished"):
        log = connection.log(run_id)[-3000:]
        raise FlowerError(f"run {run_id} ended ({status}) before {KILLED} got a train message:\n{log}")
    return False


def _online(connection: FlowerConnection) -> int:
    try:
        return sum(node.get("status") == "online" for node in connection.supernodes())
    except FlowerError:  # the SuperLink does not answer yet
        return 0


def _wait(ready: Callable[[], bool], timeout: float, failure: str, compose: Compose) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ComposeError(f"{failure} within {timeout:.0f} s; containers:\n{compose('ps', '--all').stdout}")
        time.sleep(POLL)


def _copy_results(compose: Compose, work_dir: Path) -> Path:
    """The run's directory, copied from the results volume (through the ServerApp's SuperExec)."""
    results = work_dir / "results"
    shutil.rmtree(results, ignore_errors=True)
    compose("cp", f"superexec-serverapp:/app/outputs/{RUN_NAME}", str(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedhn.launch.docker_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, default=Path("."), help="the fedhn app (default: .)")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/docker-demo"), help="certificates, results")
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="Dockerfile argument")
    args = parser.parse_args(argv)
    try:
        with stopped_by_signals():  # SIGTERM, SIGINT, SIGHUP: the deployment is removed on the way out
            result = run_demo(args.app_dir, args.work_dir, args.build_arg)
    except (ComposeError, FlowerError) as error:
        print(f"docker demo FAILED: {error}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(f"docker demo {stop}: its containers, network and volumes are removed", file=sys.stderr)
        return stop.exit_code
    for line in result.rounds:
        print(json.dumps({key: line[key] for key in ("round", "test_accuracy", "clients", "failed", "failures")}))
    print(f"results: {result.results} ({', '.join(sorted(p.name for p in result.results.iterdir()))})")
    print(result.record())
    if result.left:
        print(f"left after docker compose down -v: {', '.join(result.left)}", file=sys.stderr)
    return 0 if result.status == "finished:completed" and not result.left else 1


if __name__ == "__main__":
    sys.exit(main())
