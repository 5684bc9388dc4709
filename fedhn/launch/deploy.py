"""The topology of ``docker-compose.yml`` as processes on 127.0.0.1: a SuperLink, a SuperExec that
runs the ServerApp, and N SuperNodes, each with a SuperExec that runs its ClientApps (process
isolation), optionally over TLS and with SuperNode authentication (the SuperLink admits only
SuperNodes whose public keys were registered through its Control API, and keeps the registrations in
its database). Every process leads its own process group and is stopped by PID;
``deployment.json`` in the state directory records them, so that a later command can use or stop a
deployment that an earlier one started.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedhn.app.client_store import NODE_STATE_DIR
from fedhn.launch.processes import Process, spawn, stop
from fedhn.launch.superlink import (
    Certificates,
    FlowerConnection,
    FlowerError,
    flower_bin,
    flower_env,
    free_port,
    superlink_command,
    superlink_ready,
)

__all__ = ["CONNECTION", "Deployment", "NodeKeys", "make_certificates", "make_node_keys", "node_config", "start"]

CONNECTION = "fedhn-deploy"
SERVER_PROCESSES = ("superlink", "superexec-serverapp")
STATE_FILE = "deployment.json"
DATABASE = "superlink.db"
KEY_IN_USE = "Public key already in use"  # flwr supernode register, for a key the SuperLink holds


def make_certificates(app_dir: Path, directory: Path) -> Certificates:
    """Certificates in ``directory``, made with the app's ``scripts/make-certs.sh`` when missing."""
    certificates = Certificates(directory.resolve())
    if certificates.missing():
        script = app_dir / "scripts" / "make-certs.sh"
        result = subprocess.run(["bash", str(script), str(directory)], capture_output=True, text=True)
        if result.returncode != 0 or certificates.missing():
            raise FlowerError(f"{script} failed: {(result.stderr or result.stdout).strip()}")
    return certificates


@dataclass(frozen=True)
class NodeKeys:
    """SuperNode key pairs as ``scripts/make-node-keys.sh`` writes them into one directory: ``node-<i>``
    (ECDSA P-384 private key in OpenSSH format, for ``flower-supernode --auth-supernode-private-key``)
    and ``node-<i>.pub`` (its OpenSSH public key, for ``flwr supernode register``)."""

    directory: Path

    def private(self, index: int) -> Path:
        return self.directory / f"node-{index}"

    def public(self, index: int) -> Path:
        return self.directory / f"node-{index}.pub"

    def missing(self, nodes: int) -> list[Path]:
        """The key files of SuperNodes 0 .. ``nodes``-1 that do not exist."""
        paths = [path for index in range(nodes) for path in (self.private(index), self.public(index))]
        return [path for path in paths if not path.is_file()]


def make_node_keys(app_dir: Path, directory: Path, nodes: int) -> NodeKeys:
    """Key pairs of ``nodes`` SuperNodes in ``directory``, made with the app's
    ``scripts/make-node-keys.sh`` when missing (existing keys are kept)."""
    keys = NodeKeys(directory.resolve())
    if keys.missing(nodes):
        script = app_dir / "scripts" / "make-node-keys.sh"
        result = subprocess.run(["bash", str(script), str(directory), str(nodes)], capture_output=True, text=True)
        if result.returncode != 0 or keys.missing(nodes):
            raise FlowerError(f"{script} failed: {(result.stderr or result.stdout).strip()}")
    return keys


@dataclass
class Deployment:
    """A running deployment: its ports, certificates, SuperNode keys (with SuperNode authentication)
    and processes (SuperLink first)."""

    state_dir: Path
    port: int
    node_ports: list[int]
    certificates: Certificates | None
    node_keys: NodeKeys | None = None
    processes: list[Process] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of the ``flwr`` CLI, holding the connection ``fedhn-deploy``."""
        return self.state_dir / "flwr-home"

    @property
    def database(self) -> Path | None:
        """The SuperLink's database (with SuperNode authentication: it holds the registrations, so that
        they survive a restart of the SuperLink); None for state in memory."""
        return self.state_dir / DATABASE if self.node_keys else None

    @property
    def connection(self) -> _DeploymentConnection:
        return _DeploymentConnection(self)

    def dead(self) -> list[str]:
        """Names of its processes that are no longer running."""
        return [process.name for process in self.processes if not process.alive()]

    def save(self) -> None:
        record = {
            "port": self.port,
            "node_ports": self.node_ports,
            "certificates": str(self.certificates.directory) if self.certificates else None,
            "node_keys": str(self.node_keys.directory) if self.node_keys else None,
            "processes": [process.to_dict() for process in self.processes],
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Deployment | None:
        """The deployment recorded in ``state_dir``, or None when there is none."""
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        certificates = Certificates(Path(record["certificates"])) if record["certificates"] else None
        node_keys = NodeKeys(Path(record["node_keys"])) if record.get("node_keys") else None
        processes = [Process.from_dict(entry) for entry in record["processes"]]
        return cls(state_dir.resolve(), record["port"], record["node_ports"], certificates, node_keys, processes)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process group (SuperExecs with their ServerApp and ClientApps included) and
        forget the deployment."""
        stop(self.processes, grace)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def describe(self) -> str:
        """What runs where, and how to use it."""
        tls = f"TLS, CA certificate {self.certificates.ca}" if self.certificates else "insecure (no TLS)"
        if self.node_keys:
            tls += f", SuperNode authentication on (registered keys in {self.node_keys.directory})"
        elif self.certificates:
            tls += ", SuperNode authentication off"
        roles = {"superlink": f"{self.address}: Fleet, Control and Runtime APIs"}
        if self.database:
            roles["superlink"] += f"; database {self.database}"
        roles["superexec-serverapp"] = f"runs the ServerApp, connected to {self.address}"
        for index, port in enumerate(self.node_ports):
            config = node_config(index, len(self.node_ports), self.state_dir)
            roles[f"supernode-{index}"] = f"127.0.0.1:{port}: Runtime API for its SuperExec; {config}"
            if self.node_keys:
                roles[f"supernode-{index}"] += f"; key {self.node_keys.private(index).name}"
            roles[f"superexec-clientapp-{index}"] = f"runs the ClientApps of supernode-{index} (127.0.0.1:{port})"
        width = max(map(len, roles))
        lines = [f"  {p.name:<{width}}  pid {p.pid:<7}  {roles[p.name]}" for p in self.processes]
        return "\n".join(
            [
                f"Flower deployment on 127.0.0.1, {len(self.node_ports)} SuperNodes, {tls}:",
                *lines,
                f"Logs: {self.state_dir}/<name>.log",
                f"Connect: FLWR_HOME={self.flwr_home} flwr run . {CONNECTION}  (or: fedhn deploy run)",
            ]
        )


class _DeploymentConnection(FlowerConnection):
    """``flwr`` against the deployment's SuperLink; a run fails fast when the SuperLink or the
    ServerApp's SuperExec died. A dead SuperNode does not stop the run: the server drops it after
    the round timeout and goes on with the other nodes while ``min-train-nodes`` remain."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment.flwr_home, CONNECTION)
        self.deployment = deployment

    def check_running(self, run_id: int, status: str) -> None:
        if dead := [name for name in self.deployment.dead() if name in SERVER_PROCESSES]:
            logs = self.deployment.state_dir
            raise FlowerError(f"{', '.join(dead)} stopped while run {run_id} was {status}; see the logs in {logs}")

    def register(self, public_key: Path, name: str) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``); a key
        that the SuperLink's database already holds counts as registered."""
        try:
            self._json("flwr supernode register", "supernode", "register", str(public_key), self.name, "--name", name)
        except FlowerError as error:
            if KEY_IN_USE not in str(error):
                raise


def node_config(index: int, nodes: int, state_dir: Path) -> str:
    """SuperNode ``index``'s node config: its partition, and the directory where its clients keep
    their own state (FedBN's norm layers, :mod:`fedhn.app.client_store`): ``STATE_DIR/client-state-<index>``."""
    return f"partition-id={index} num-partitions={nodes} {NODE_STATE_DIR}='{state_dir / f'client-state-{index}'}'"


def start(
    state_dir: Path,
    nodes: int,
    port: int | None = None,
    certificates: Certificates | None = None,
    workdir: Path = Path("."),
    timeout: float = 60.0,
    node_keys: NodeKeys | None = None,
) -> Deployment:
    """Start a deployment and wait until every SuperNode is connected; on any failure, stop what
    was started and raise :class:`FlowerError`.

    Args:
        state_dir: where the processes' logs and FLWR_HOMEs, and ``deployment.json``, go.
        nodes: the number of SuperNodes; SuperNode i gets the node config of :func:`node_config`.
        port: the SuperLink's port (a free one by default); SuperNodes get free ports.
        certificates: TLS for the SuperLink's port (Fleet, Control, Runtime APIs), or None.
        workdir: working directory of every process: relative run-config paths resolve against it.
        node_keys: SuperNode authentication with these keys (needs ``certificates``): node i's public
            key is registered before SuperNode i starts with its private key; None admits any SuperNode.
    """
    if nodes < 1:
        raise FlowerError(f"a deployment needs at least one SuperNode, not {nodes}")
    if node_keys is not None:
        if certificates is None:
            raise FlowerError(
                "SuperNode authentication needs TLS: start the deployment with certificates, or without keys"
            )
        if missing := node_keys.missing(nodes):
            raise FlowerError(
                f"SuperNode keys missing: {', '.join(map(str, missing))}; make them with "
                f"scripts/make-node-keys.sh {node_keys.directory} {nodes}"
            )
    state_dir = state_dir.resolve()
    if (running := Deployment.load(state_dir)) is not None:
        if not running.dead():
            raise FlowerError(f"a deployment is already running in {state_dir}; stop it with: fedhn deploy down")
        running.stop()
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(nodes)]
    deployment = Deployment(state_dir, port or free_port(), ports, certificates, node_keys)
    try:
        _launch(deployment, workdir.resolve(), timeout)
        deployment.save()
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _launch(deployment: Deployment, workdir: Path, timeout: float) -> None:
    """Start the deployment's processes in order, each once the one it connects to answers; with
    SuperNode authentication, register every node's public key before the SuperNodes start."""
    certificates, keys, nodes = deployment.certificates, deployment.node_keys, len(deployment.node_ports)
    security = ["--root-certificates", str(certificates.ca)] if certificates else ["--insecure"]

    def launch(name: str, *command: str) -> None:
        env = flower_env(deployment.state_dir / name)  # a FLWR_HOME of its own, as in its own container
        deployment.processes.append(spawn(name, command, deployment.state_dir / f"{name}.log", workdir, env))

    superlink = superlink_command(
        deployment.port,
        simulation=False,
        certificates=certificates,
        database=deployment.database,
        supernode_auth=keys is not None,
    )
    launch("superlink", *superlink)
    _wait(lambda: superlink_ready(deployment.port, certificates and certificates.ca), deployment, timeout)
    connection = deployment.connection
    connection.configure(deployment.address, certificates and certificates.ca)
    if keys:
        for index in range(nodes):
            connection.register(keys.public(index), f"supernode-{index}")
    superexec = [flower_bin("flower-superexec"), "--runtime-api-address"]
    launch("superexec-serverapp", *superexec, deployment.address, *security)
    for index, node_port in enumerate(deployment.node_ports):
        node = ["--superlink", deployment.address, *security, "--isolation", "process"]
        node += ["--node-config", node_config(index, nodes, deployment.state_dir)]
        node += ["--auth-supernode-private-key", str(keys.private(index))] if keys else []
        launch(
            f"supernode-{index}", flower_bin("flower-supernode"), *node, "--host", "127.0.0.1", "--port", str(node_port)
        )
        launch(f"superexec-clientapp-{index}", *superexec, f"127.0.0.1:{node_port}", "--insecure")
    _wait(lambda: _online(connection) >= nodes, deployment, timeout)


def _online(connection: FlowerConnection) -> int:
    return sum(node.get("status") == "online" for node in connection.supernodes())


def _wait(ready: Callable[[], bool], deployment: Deployment, timeout: float) -> None:
    """Wait until ``ready()``; raise when a process died or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if dead := deployment.dead():
            raise FlowerError(f"{', '.join(dead)} exited at startup; see {deployment.state_dir}/{dead[0]}.log")
        if time.monotonic() > deadline:
            raise FlowerError(
                f"the deployment was not ready within {timeout:.0f} s; see the logs in {deployment.state_dir}"
            )
        time.sleep(0.3)
