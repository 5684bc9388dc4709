"""``fedhn compare``: one Flower simulation (``flwr run``) per norm on a SuperLink of our own, then a
summary table and an accuracy plot."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
from flwr.common.config import parse_config_args

from fedhn.app.config import ConfigError, RunConfig, load_app_defaults
from fedhn.app.preflight import run_problems
from fedhn.app.results import METRICS_FILE, RunResults, read_results
from fedhn.data import is_folder_path
from fedhn.launch.report import write_report
from fedhn.launch.superlink import FlowerConnection, FlowerError, LocalSuperLink

__all__ = [
    "Federation",
    "Comparison",
    "configure_runs",
    "plan_runs",
    "run_comparison",
    "run_one",
    "submit",
    "parse_run_config_args",
    "run_label",
]

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class Federation:
    """The simulated federation: supernodes and the resources of each ClientApp."""

    num_supernodes: int = 10
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0

    def as_flower_config(self) -> dict[str, Any]:
        return {
            "num-supernodes": self.num_supernodes,
            "client-resources-num-cpus": self.cpus_per_client,
            "client-resources-num-gpus": self.gpus_per_client,
        }


@dataclass
class Comparison:
    """What a comparison produced: runs read back from disk, and the runs that failed with why."""

    out_dir: Path
    runs: list[RunResults] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    table: str = ""


def run_label(norm: str) -> str:
    """A directory name for a norm spec (``mean=bn,std=bn+en`` -> ``mean-bn_std-bn+en``)."""
    return re.sub(r"[^A-Za-z0-9_+.-]", "_", norm.replace("=", "-").replace(",", "_"))


def parse_run_config_args(items: Sequence[str]) -> dict[str, Any]:
    """Run-config overrides given as Flower does: TOML file paths or ``"key=value key2=value2"``
    strings; later items win."""
    merged: dict[str, Any] = {}
    for item in items:
        if item.endswith(".toml") and not Path(item).is_file():
            raise ConfigError(f"run-config file {item} does not exist")
        merged.update(parse_config_args([item]))
    return merged


def configure_runs(
    app_dir: Path, norms: Sequence[str], overrides: dict[str, Any], out_dir: Path
) -> dict[str, RunConfig]:
    """One RunConfig per norm (the app's defaults | ``overrides`` | its norm) with absolute paths and its own
    out-dir, without loading any data.

    Raises:
        ConfigError: every problem of every norm, in one message.
    """
    if not norms:
        raise ConfigError("no norms to compare: pass e.g. --norms bn,gn_g4,hn")
    base = load_app_defaults(app_dir) | overrides
    dataset = str(base.get("dataset", ""))
    if dataset.endswith(".npz") or is_folder_path(dataset):
        base["dataset"] = str(Path(dataset).expanduser().resolve())
    if base.get("cache-dir"):
        base["cache-dir"] = str(Path(str(base["cache-dir"])).expanduser().resolve())
    base["data-dir"] = str(Path(str(base.get("data-dir", "data"))).expanduser().resolve())
    plans, problems = {}, []
    for norm in norms:
        try:
            plans[norm] = RunConfig.from_mapping(base | {"norm": norm, "out-dir": str(out_dir / run_label(norm))})
        except ConfigError as error:
            problems.append(f"norm {norm!r}: {error}")
    if problems:
        raise ConfigError("\n".join(problems))
    return plans


def plan_runs(
    app_dir: Path, norms: Sequence[str], overrides: dict[str, Any], out_dir: Path, federation: Federation
) -> dict[str, RunConfig]:
    """Validate every run before anything starts: ``configure_runs``, then each run checked against the
    federation and the data (the dataset loads, every client gets examples).

    Raises:
        ConfigError: every problem of every run, in one message.
    """
    if federation.num_supernodes < 1 or federation.cpus_per_client < 1 or federation.gpus_per_client < 0:
        raise ConfigError(
            "--num-supernodes and --cpus-per-client must be >= 1 and --gpus-per-client >= 0 "
            f"(got {federation.num_supernodes}, {federation.cpus_per_client}, {federation.gpus_per_client})"
        )
    plans = configure_runs(app_dir, norms, overrides, out_dir)
    first = next(iter(plans.values()))
    clients = federation.num_supernodes * first.clients_per_node
    problems = [problem for config in plans.values() for problem in run_problems(config, clients)]
    if clients < first.min_train_nodes:
        problems.append(
            f"{federation.num_supernodes} supernodes x {first.clients_per_node} clients-per-node = {clients} clients, "
            f"below min-train-nodes = {first.min_train_nodes}; add supernodes or clients per node"
        )
    if problems:
        raise ConfigError.listing(problems)
    return plans


def run_comparison(
    app_dir: Path,
    plans: dict[str, RunConfig],
    out_dir: Path,
    federation: Federation,
    echo: Callable[[str], None] = print,
) -> Comparison:
    """Run each planned simulation with ``flwr run`` on a SuperLink started (and stopped) here."""
    comparison = Comparison(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with LocalSuperLink(workdir=out_dir) as superlink:
        for index, (norm, config) in enumerate(plans.items(), start=1):
            echo(
                f"[{index}/{len(plans)}] {norm}: {config.model} on {Path(config.dataset).name}, "
                f"{federation.num_supernodes * config.clients_per_node} clients on {federation.num_supernodes} nodes, "
                f"{config.num_server_rounds} rounds"
            )
            failure = run_one(superlink, app_dir, config, norm, echo, federation.as_flower_config())
            if failure:
                reason, details = failure
                comparison.failed[norm] = reason
                echo(f"  {norm} FAILED: {reason}{details}")
            else:
                comparison.runs.append(read_results(config.out_dir))
                echo(f"  {comparison.runs[-1].summary()}")
    comparison.table = write_report(comparison.runs, out_dir, comparison.failed)
    return comparison


def submit(
    connection: FlowerConnection, app_dir: Path, config: RunConfig, federation_config: dict[str, Any] | None = None
) -> int:
    """Write the run's ``run-config.toml`` into its out-dir and start it with ``flwr run``; return the run id."""
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "run-config.toml"
    config_file.write_text(tomli_w.dumps(config.to_dict()))
    return connection.submit(app_dir, config_file, federation_config)


def run_one(
    connection: FlowerConnection,
    app_dir: Path,
    config: RunConfig,
    label: str,
    echo: Callable[[str], None],
    federation_config: dict[str, Any] | None = None,
) -> tuple[str, str] | None:
    """Run the app once with ``flwr run`` on ``connection`` (a simulation SuperLink with its
    federation config, or a deployment), echoing each round as it finishes; the run's directory
    receives ``run-config.toml``, the results and ``flower.log``. Return why it failed (a reason and
    details such as the log tail), or None."""
    run_dir = Path(config.out_dir)
    progress = _Progress(run_dir, label, config.num_server_rounds, echo)
    try:
        run_id = submit(connection, app_dir, config, federation_config)
    except FlowerError as error:
        return str(error), ""
    try:
        status = connection.wait(run_id, progress.update)
    except FlowerError as error:
        return str(error), ""
    finally:
        log = connection.log(run_id)
        (run_dir / "flower.log").write_text(log)
    progress.update()
    if status["status"] != "finished:completed":
        tail = "\n".join("    " + line for line in log.strip().splitlines()[-LOG_TAIL_LINES:])
        return (
            f"{status['status']} ({status.get('status-details', '')})",
            f"\n  log tail ({run_dir / 'flower.log'}):\n{tail}",
        )
    rounds = len(read_results(run_dir).rounds)
    if rounds != config.num_server_rounds:
        return (
            f"the run finished with {rounds} of {config.num_server_rounds} rounds recorded",
            f"; see {run_dir / 'flower.log'}",
        )
    return None


class _Progress:
    """Echo each round of a run's metrics.jsonl as it appears (rounds already there at the start,
    e.g. of a resumed run, are not repeated)."""

    def __init__(self, run_dir: Path, norm: str, rounds: int, echo: Callable[[str], None]) -> None:
        self.run_dir, self.norm, self.rounds, self.echo = run_dir, norm, rounds, echo
        self.last_round = self._records()[-1]["round"] if self._records() else 0

    def _records(self) -> list[dict[str, Any]]:
        return read_results(self.run_dir).rounds if (self.run_dir / METRICS_FILE).is_file() else []

    def update(self) -> bool:
        """Echo the rounds recorded since the last call; return whether every round is recorded."""
        for record in self._records():
            if record["round"] <= self.last_round:
                continue
            loss = record.get("train_loss")
            self.echo(
                f"  [{self.norm}] round {record['round']}/{self.rounds}: test accuracy {record['test_accuracy']:.4f}"
                + (f", train loss {loss:.3f}" if loss is not None else "")
                + (
                    f", client accuracy {record['client_evaluation']['accuracy']:.4f}"
                    if record.get("client_evaluation", {}).get("clients")
                    else ""
                )
                + (f", {record['failed']} clients failed" if record.get("failed") else "")
                + f" ({record['wall_time']:.1f} s)"
            )
            self.last_round = record["round"]
        return self.last_round >= self.rounds


def progress_report(plans: dict[str, RunConfig]) -> str:
    """One line per planned run: the rounds it recorded (finished, interrupted or not started)."""
    lines = []
    for norm, config in plans.items():
        run_dir = Path(config.out_dir)
        done = len(read_results(run_dir).rounds) if (run_dir / METRICS_FILE).is_file() else 0
        state = "finished" if done == config.num_server_rounds else "interrupted" if done else "not started"
        lines.append(f"  {norm}: {done}/{config.num_server_rounds} rounds ({state})")
    return "\n".join(lines)


def default_out_dir() -> Path:
    return Path("outputs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
