"""``fedhn deploy up|run|status|down``: the docker-compose.yml topology as processes on 127.0.0.1."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedhn.launch.signals import Stopped, stopped_by_signals

if TYPE_CHECKING:
    from fedhn.app.config import RunConfig
    from fedhn.launch.deploy import Deployment

app = typer.Typer(
    help="A Flower deployment on this machine: SuperLink, SuperNodes and their SuperExecs, stopped by PID.",
    no_args_is_help=True,
)

STATE_DIR = Path(".flwr-home/deploy")  # gitignored, hence never packed into the FAB
StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Logs, FLWR_HOMEs and deployment.json of the deployment (gitignored).")
]
Nodes = Annotated[int, typer.Option("--nodes", "-n", help="SuperNodes; node i gets partition-id=i.")]
Port = Annotated[int | None, typer.Option(help="The SuperLink's port.", show_default="a free port")]
Tls = Annotated[bool, typer.Option("--tls/--insecure", help="TLS on the SuperLink's port (Fleet, Control, Runtime).")]
CertDir = Annotated[
    Path | None,
    typer.Option(
        "--certificates",
        help="ca.crt, server.pem, server.key (made with scripts/make-certs.sh when missing).",
        show_default="STATE_DIR/certificates",
    ),
]
Auth = Annotated[
    bool | None,
    typer.Option(
        "--auth/--no-auth",
        help="SuperNode authentication: the SuperLink admits only SuperNodes whose public keys are registered.",
        show_default="on with TLS",
    ),
]
KeyDir = Annotated[
    Path | None,
    typer.Option(
        "--node-keys",
        help="node-<i> and node-<i>.pub per SuperNode (made with scripts/make-node-keys.sh when missing).",
        show_default="STATE_DIR/node-keys",
    ),
]
AppDir = Annotated[Path, typer.Option("--app", help="The Flower App (fedhn's project directory).")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _start(
    state_dir: Path,
    nodes: int,
    port: int | None,
    tls: bool,
    certificates: Path | None,
    app_dir: Path,
    auth: bool | None = None,
    node_keys: Path | None = None,
) -> Deployment:
    """Start a deployment; SuperNode authentication (``auth``) defaults to on with TLS."""
    from fedhn.launch.deploy import make_certificates, make_node_keys, start
    from fedhn.launch.superlink import FlowerError

    if auth and not tls:
        raise _fail(
            "--auth needs TLS (Flower authenticates SuperNodes only over TLS): drop --insecure, or use --no-auth"
        )
    auth = tls if auth is None else auth
    if node_keys and not auth:
        raise _fail("--node-keys is for SuperNode authentication, which --no-auth or --insecure turned off")
    try:
        certs = make_certificates(app_dir, certificates or state_dir / "certificates") if tls else None
        keys = make_node_keys(app_dir, node_keys or state_dir / "node-keys", nodes) if auth else None
        return start(state_dir, nodes, port, certs, node_keys=keys)
    except FlowerError as error:
        raise _fail(str(error)) from None


@app.command()
def up(
    nodes: Nodes = 2,
    port: Port = None,
    tls: Tls = True,
    certificates: CertDir = None,
    auth: Auth = None,
    node_keys: KeyDir = None,
    state_dir: StateDir = STATE_DIR,
    app_dir: AppDir = Path("."),
) -> None:
    """Start a deployment in the background and wait until every SuperNode is connected.

    A SuperLink, a SuperExec for the ServerApp, and N SuperNodes each with a SuperExec for its
    ClientApps, all on 127.0.0.1. With SuperNode authentication (the default with TLS) each node's
    public key is registered (flwr supernode register) before it starts, and the SuperLink keeps the
    registrations in STATE_DIR/superlink.db.
    """
    try:
        with stopped_by_signals():  # until the deployment is up and handed over, a signal stops what started
            deployment = _start(state_dir, nodes, port, tls, certificates, app_dir, auth, node_keys)
    except Stopped as stop:
        raise _fail(
            f"{stop} while the deployment started: every process it started is stopped", stop.exit_code
        ) from None
    typer.echo(deployment.describe())
    typer.echo("Stop: fedhn deploy down")


@app.command()
def run(
    run_config: Annotated[
        list[str] | None,
        typer.Option("--run-config", "-c", help="A run-config TOML file or 'key=value ...' overrides (repeatable)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory.", show_default="outputs/deploy-<time>")] = None,
    nodes: Nodes = 2,
    port: Port = None,
    tls: Tls = True,
    certificates: CertDir = None,
    state_dir: StateDir = STATE_DIR,
    app_dir: AppDir = Path("."),
) -> None:
    """Run the app on the deployment (flwr run APP fedhn-deploy); results go to OUT/<norm>.

    Uses the deployment of `fedhn deploy up` (whose --nodes, --port, --tls and --certificates then
    apply); without one, starts a deployment for this run and stops it afterwards, also when the run
    fails.
    """
    from datetime import datetime

    from fedhn.app.config import ConfigError, load_app_defaults
    from fedhn.app.results import read_results
    from fedhn.launch.compare import Federation, parse_run_config_args, plan_runs, progress_report
    from fedhn.launch.deploy import Deployment

    app_dir = app_dir.resolve()
    running = Deployment.load(state_dir)
    if running is not None and running.dead():
        raise _fail(
            f"the deployment in {state_dir} is broken ({', '.join(running.dead())} stopped); run: fedhn deploy down"
        )
    out_dir = (out or Path("outputs") / f"deploy-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    try:
        overrides = parse_run_config_args(run_config or [])
        norm = str(overrides.get("norm", load_app_defaults(app_dir)["norm"]))
        federation = Federation(num_supernodes=len(running.node_ports) if running else nodes)
        config = plan_runs(app_dir, [norm], overrides, out_dir, federation)[norm]
    except (ConfigError, OSError) as error:
        raise _fail(str(error), code=2) from None
    try:
        with stopped_by_signals():
            failure = _run_on(running, config, norm, app_dir, (state_dir, nodes, port, tls, certificates, app_dir))
    except Stopped as stop:
        typer.echo(progress_report({norm: config}), err=True)
        owner = "stopped with the deployment" if running is None else "left to the deployment of `fedhn deploy up`"
        hint = f'fedhn deploy run {shlex.join(sys.argv[3:])} --out {out_dir} -c "resume=true"'
        raise _fail(
            f"{stop}; the processes this command started are stopped, the run {owner}. Resume: {hint}", stop.exit_code
        ) from None
    if failure:
        raise _fail(f"run FAILED: {''.join(failure)}")
    typer.echo(read_results(config.out_dir).summary())


def _run_on(
    running: Deployment | None, config: RunConfig, norm: str, app_dir: Path, start_args: tuple
) -> tuple[str, str] | None:
    """Run ``config`` on the ``running`` deployment, or on one started for it (and stopped after it)."""
    from fedhn.launch.compare import run_one
    from fedhn.launch.superlink import FlowerError

    deployment = running or _start(*start_args)
    if running is None:
        typer.echo(deployment.describe() + "\n(a deployment for this run: stopped when it ends)")
    try:
        return run_one(deployment.connection, app_dir, config, norm, typer.echo)
    except FlowerError as error:
        return str(error), ""
    finally:
        if running is None:
            deployment.stop()


@app.command()
def status(state_dir: StateDir = STATE_DIR) -> None:
    """Show the deployment: processes, ports, how to connect."""
    from fedhn.launch.deploy import Deployment

    deployment = Deployment.load(state_dir)
    if deployment is None:
        raise _fail(f"no deployment in {state_dir}; start one with: fedhn deploy up")
    typer.echo(deployment.describe())
    if dead := deployment.dead():
        raise _fail(f"stopped: {', '.join(dead)} (logs in {deployment.state_dir}); run: fedhn deploy down")


@app.command()
def down(state_dir: StateDir = STATE_DIR) -> None:
    """Stop every process of the deployment by PID, with what its SuperExecs started."""
    from fedhn.launch.deploy import Deployment

    deployment = Deployment.load(state_dir)
    if deployment is None:
        typer.echo(f"no deployment in {state_dir}")
        return
    deployment.stop()
    typer.echo(f"stopped {len(deployment.processes)} processes of the deployment in {deployment.state_dir}")
