"""The paper's claims in federated settings (issue #7 parts 2 and 3): the tables of docs/results.md.

Each table is a list of *groups*, one ``fedhn compare`` invocation each (a setting, a few norms and
run-config overrides, written to ``outputs/repro/<group>``), and a way to summarize their runs.

    python -m experiments.reproduce iid           # rebuild the table (and its plot) from outputs/repro
    python -m experiments.reproduce iid --run     # first run the comparisons that are missing
    python -m experiments.reproduce --list        # the tables, their groups and commands

Runs already complete are never repeated; a partial run is resumed from its checkpoint. Tables read
runs with :func:`fedhn.app.results.read_results`; accuracies are in %, "final" is the last round's test
accuracy, "best" the best round's. Across seeds a cell is ``mean ± std`` (sample std, n-1).

Every run has ``calibrate-stats = true`` (configs/repro-*.toml): federated precise statistics after
the last round only. metrics.jsonl records the test accuracy before it, so every table reports the
run without it (:func:`uncalibrated`) except the ``calibrate`` table, which reports its effect,
computed on the saved ``model.pt`` (:func:`offline_calibration`; the federated result depends on the
weights only, and the table's first part checks that both agree).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedhn.app.config import RunConfig
from fedhn.app.results import MODEL_FILE, RunResults, read_results
from fedhn.app.task import client_data, new_model, test_data
from fedhn.calibration import calibrate, calibrated_layers
from fedhn.launch.compare import run_label
from fedhn.launch.signals import Stopped, stopped_by_signals
from fedhn.plotting import pyplot
from fedhn.training import evaluate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "repro"
PLOTS = ROOT / "docs" / "results"
CLIENTS = 10
NORMS = ("bn", "gn_g8", "hn", "hn_g8", "sn", "mean=bn,std=bn+en")
TOP = ("bn", "gn_g8", "hn")  # the norms repeated over seeds
BATCH_STATS = ("bn", "hn")  # the norms of the stats-aggregation and calibrate-stats tables

# setting -> (run config, label)
SETTINGS = {
    "b128": ("configs/repro-b128.toml", "(a) batch 128"),
    "b2-4": ("configs/repro-b2-4.toml", "(b) batch 2-4"),
    "hetero": ("configs/repro-hetero.toml", "(c) batch 2..128"),
}
IID, DIRICHLET = "", 'partitioner="dirichlet" dirichlet-alpha=0.5'  # the configs are IID


@dataclass(frozen=True)
class Group:
    """One ``fedhn compare`` invocation: a run-config file plus overrides, for some norms, into
    ``root/name``."""

    name: str  # directory under root
    config: str  # a run-config TOML, relative to the repository root
    label: str  # the setting, as tables name it
    norms: tuple[str, ...]
    overrides: str = IID
    root: Path = OUT
    federation: tuple[str, ...] = ("--num-supernodes", str(CLIENTS))  # fedhn compare's federation options

    @property
    def out_dir(self) -> Path:
        return self.root / self.name

    def run_dir(self, norm: str) -> Path:
        return self.out_dir / run_label(norm)

    def command(self, norms: Sequence[str] | None = None, resume: bool = False) -> list[str]:
        """The ``fedhn compare`` command line (run from the repository root)."""
        return [
            ".venv/bin/fedhn",
            "compare",
            "--norms",
            ";".join(norms or self.norms),
            "--run-config",
            self.config,
            *(["--run-config", self.overrides] if self.overrides else []),
            *self.federation,
            "--out",
            str(self.out_dir.relative_to(ROOT)),
        ] + (["--resume"] if resume else [])

    def runs(self) -> dict[str, RunResults]:
        """The runs of this group found on disk, by norm."""
        return {
            norm: read_results(self.run_dir(norm))
            for norm in self.norms
            if (self.run_dir(norm) / "config.json").is_file()
        }


def _group(name: str, setting: str, norms: tuple[str, ...], overrides: str = IID) -> Group:
    """A group of one of this module's SETTINGS."""
    config, label = SETTINGS[setting]
    return Group(name, config, label, norms, overrides)


def _seeded(setting: str, seed: int, norms: tuple[str, ...] = TOP) -> Group:
    """The IID group of ``setting`` for ``seed`` (seed 0 is the main grid's group, with all norms)."""
    if seed == 0:
        return _group(f"iid-{setting}", setting, NORMS)
    return _group(f"seed{seed}-{setting}", setting, norms, f"seed={seed}")


MAIN = {setting: _group(f"iid-{setting}", setting, NORMS) for setting in SETTINGS}


def complete(run: RunResults) -> bool:
    return len(run.rounds) >= int(run.run_config["num-server-rounds"])


def run_group(group: Group) -> None:
    """Run the norms of ``group`` that have no complete run yet (resuming partial ones)."""
    existing = group.runs()
    partial = [n for n in group.norms if n in existing and existing[n].rounds and not complete(existing[n])]
    fresh = [n for n in group.norms if n not in existing or not existing[n].rounds]
    for norms, resume in ((partial, True), (fresh, False)):
        if not norms:
            continue
        command = group.command(norms, resume)
        print("$ " + shlex.join(command), flush=True)
        started = time.monotonic()
        code = call(command)
        print(f"  ({time.monotonic() - started:.0f} s, exit {code})", flush=True)


def run_groups(groups: Sequence[Group]) -> None:
    """:func:`run_group` each in turn; on SIGTERM, SIGINT or SIGHUP stop the one running (its finished
    runs and rounds stay) and exit 128 + the signal's number."""
    try:
        with stopped_by_signals():
            for group in groups:
                run_group(group)
    except Stopped as stop:
        print(f"{stop}: the running comparison was stopped; --run again resumes it", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


def call(command: Sequence[str]) -> int:
    """Run ``command`` from the repository root and return its exit code. Stopped by a signal
    (:func:`fedhn.launch.signals.stopped_by_signals`), it first sends the command SIGTERM and waits for it:
    ``fedhn compare`` then stops every process it started and keeps what finished (the next ``--run``
    resumes)."""
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        return process.wait()
    except Stopped:
        process.terminate()
        process.wait()
        raise


# --- summaries -------------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` in %, or the single value."""
    if not values:
        return "-"
    if len(values) == 1:
        return pct(values[0])
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def final_best(run: RunResults | None) -> str:
    """``final / best`` in %, without the final calibration (a run that did not finish is marked
    with its rounds)."""
    if run is None or not run.rounds:
        return "-"
    run = uncalibrated(run)
    cell = f"{pct(run.final_accuracy)} / {pct(run.best[0])}"
    return cell if complete(run) else f"{cell} ({len(run.rounds)}/{run.run_config['num-server-rounds']} rounds)"


def uncalibrated(run: RunResults) -> RunResults:
    """The run as it was before a final ``calibrate-stats`` pass (the last round's recorded
    ``calibration.test_accuracy_before``); runs without calibration are returned unchanged."""
    if not run.rounds or "calibration" not in run.rounds[-1]:
        return run
    last = dict(run.rounds[-1], test_accuracy=run.rounds[-1]["calibration"]["test_accuracy_before"])
    return RunResults(run.out_dir, run.run_config, run.rounds[:-1] + [last])


def setup_line(groups: Sequence[Group]) -> str:
    """Rounds, epochs, data, model of the groups' runs (from their recorded configs)."""
    configs = [run.run_config for g in groups for run in g.runs().values()]
    if not configs:
        return ""
    keys = ("dataset", "model", "num-server-rounds", "local-epochs", "lr", "lr-schedule")
    values = {key: sorted({str(c[key]) for c in configs}) for key in keys}
    values["dataset"] = [Path(v).name for v in values["dataset"]]
    return "Setup: " + ", ".join(f"{key} {'/'.join(v)}" for key, v in values.items())


def wall_times(groups: Sequence[Group]) -> str:
    """Sum of the runs' recorded wall times (rounds only; each run adds ~20-40 s of Flower/Ray start)."""
    total = sum(run.wall_time or 0.0 for g in groups for run in g.runs().values())
    count = sum(len(g.runs()) for g in groups)
    return f"{count} runs, {total / 60:.0f} min of recorded round time"


def norms_table(groups: Sequence[Group], plot: Path | None) -> str:
    """Rows: norms; columns: the groups (settings); cells: final / best accuracy."""
    norms = list(dict.fromkeys(n for g in groups for n in g.norms))
    runs = {g.name: g.runs() for g in groups}
    lines = [
        "| norm | " + " | ".join(f"{g.label} final / best" for g in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for norm in norms:
        lines.append(f"| {norm} | " + " | ".join(final_best(runs[g.name].get(norm)) for g in groups) + " |")
    if plot:
        plot_curves([(g.label, [uncalibrated(r) for r in runs[g.name].values()]) for g in groups], plot)
    return "\n".join(lines)


def seeds_table(columns: Sequence[tuple[str, Sequence[Group]]], plot: Path | None) -> str:
    """Rows: norms; columns: (label, the groups of one setting over seeds); cells: mean ± std over the
    seeds of final and best accuracy."""
    lines = ["| norm | " + " | ".join(f"{label} final | best" for label, _ in columns) + " |"]
    lines.append("|---|" + "---|---|" * len(columns))
    by_column: list[dict[str, list[RunResults]]] = [{} for _ in columns]
    for norm in TOP:
        cells = []
        for (_, groups), runs_by_norm in zip(columns, by_column, strict=True):
            runs = [uncalibrated(r) for g in groups if (r := g.runs().get(norm)) and complete(r)]
            runs_by_norm[norm] = runs
            cells += [
                mean_std([r.final_accuracy for r in runs]) + f" (n={len(runs)})",
                mean_std([r.best[0] for r in runs]),
            ]
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    if plot:
        plot_bands([(label, runs) for (label, _), runs in zip(columns, by_column, strict=True)], plot)
    return "\n".join(lines)


def stats_table(cases: Sequence[tuple[str, bool]], plot: Path | None) -> str:
    """Rows: (setting, Dirichlet?) x norm; columns: stats-aggregation pooled / mean / local (final / best)."""
    modes = ("pooled", "mean", "local")
    lines = ["| setting | norm | " + " | ".join(f"{m} final / best" for m in modes) + " |", "|---|---|---|---|---|"]
    for setting, dirichlet in cases:
        label = SETTINGS[setting][1] + (", Dirichlet 0.5" if dirichlet else ", IID")
        for norm in BATCH_STATS:
            cells = [final_best(_stats_group(setting, mode, dirichlet).runs().get(norm)) for mode in modes]
            lines.append(f"| {label} | {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stats_group(setting: str, mode: str, dirichlet: bool = False) -> Group:
    if mode == "pooled":
        return _group(f"dir-{setting}", setting, NORMS, DIRICHLET) if dirichlet else MAIN[setting]
    split = "dir-" if dirichlet else ""
    overrides = f'stats-aggregation="{mode}"' + (f" {DIRICHLET}" if dirichlet else "")
    return _group(f"stats-{mode}-{split}{setting}", setting, BATCH_STATS, overrides)


# The check of offline against federated calibration: the same 3-round runs without and with it.
CHECK_PLAIN = _group("check-plain", "b2-4", BATCH_STATS, "num-server-rounds=3 calibrate-stats=false")
CHECK_CALIBRATED = _group("check-calibrated", "b2-4", BATCH_STATS, "num-server-rounds=3")


@torch.no_grad()
def offline_calibration(run_dir: Path) -> tuple[float, float] | None:
    """Test accuracy of a run's saved ``model.pt`` before and after :func:`fedhn.calibration.calibrate`
    on the union of its clients' partitions: what ``calibrate-stats`` computes, which depends on the
    weights only (cached in ``<run_dir>/offline-calibration.json``; None for norms without running
    statistics)."""
    cache_path = run_dir / "offline-calibration.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if "exact" in cache:
        return None if cache["exact"] is None else tuple(cache["exact"])
    config = RunConfig.from_mapping(read_results(run_dir).run_config)
    model = new_model(config)
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, weights_only=True))
    result = None
    if calibrated_layers(model):
        union = torch.cat([client_data(config, client, CLIENTS).images for client in range(CLIENTS)])
        test_images, test_labels = test_data(config)
        before = evaluate(model, test_images, test_labels, config.eval_batch_size)[1]
        calibrate(model, union, config.eval_batch_size)
        result = (before, evaluate(model, test_images, test_labels, config.eval_batch_size)[1])
    cache["exact"] = result
    cache_path.write_text(json.dumps(cache))
    return result


def calibration_before(run: RunResults) -> float | None:
    """The recorded test accuracy just before the final calibrate-stats pass (None without one)."""
    return run.rounds[-1].get("calibration", {}).get("test_accuracy_before") if run.rounds else None


def one_pass(run: RunResults) -> bool:
    """Whether the run's final calibration was fedhn's first, one-pass version (all layers set from
    one eval pass with the old statistics upstream; replaced on 2026-11-26): it records no layer count."""
    return "layers" not in run.rounds[-1].get("calibration", {"layers": None})


def calibrate_table(plot: Path | None) -> str:
    """calibrate-stats: (1) the check that the federated calibration equals the offline one; (2) its
    effect in every setting (IID over the seeds that exist, and Dirichlet), next to the first, one-pass
    version where a run recorded it."""
    lines = [
        "| check (batch 2-4, 3 rounds) | run without: final | offline calibration of its model "
        "| run with calibrate-stats: before | after |",
        "|---|---|---|---|---|",
    ]
    for norm in BATCH_STATS:
        plain, calibrated = CHECK_PLAIN.runs().get(norm), CHECK_CALIBRATED.runs().get(norm)
        offline = offline_calibration(plain.out_dir) if plain else None
        lines.append(
            f"| {norm} | {pct(plain.final_accuracy if plain else None)} | {pct(offline[1] if offline else None)} "
            f"| {pct(calibration_before(calibrated) if calibrated else None)} "
            f"| {pct(calibrated.final_accuracy if calibrated else None)} |"
        )
    lines += [
        "",
        "| setting | norm | runs | without | calibrate-stats | change | one pass (first version) | change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sources = [(SETTINGS[s][1] + ", IID", [_seeded(s, seed, NORMS) for seed in (0, 1, 2)]) for s in SETTINGS]
    sources += [(g.label + ", Dirichlet 0.5", [g]) for g in _DIRICHLET]
    for label, groups in sources:
        for norm in NORMS:
            runs = [
                r for g in groups if (r := g.runs().get(norm)) and complete(r) and calibration_before(r) is not None
            ]
            if not runs:
                continue
            before = [calibration_before(r) for r in runs]
            after = [offline_calibration(r.out_dir)[1] for r in runs]
            cells = [mean_std(before), mean_std(after), _delta([a - b for a, b in zip(after, before, strict=True)])]
            old = [(r.final_accuracy, b) for r, b in zip(runs, before, strict=True) if one_pass(r)]
            cells += [mean_std([a for a, _ in old]), _delta([a - b for a, b in old])] if old else ["-", "-"]
            lines.append(f"| {label} | {norm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delta(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:+.1f}"
    return f"{100 * statistics.mean(values):+.1f} ± {100 * statistics.stdev(values):.1f}"


# --- plots -----------------------------------------------------------------------------------------


def _axes(count: int):
    plt = pyplot()
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), sharey=True, squeeze=False)
    return plt, figure, axes[0]


def plot_curves(panels: Sequence[tuple[str, list[RunResults]]], path: Path) -> None:
    """Test accuracy per round, one panel per setting (with runs), one line per norm."""
    panels = [(title, runs) for title, runs in panels if runs]
    if not panels:
        return
    plt, figure, axes = _axes(len(panels))
    for ax, (title, runs) in zip(axes, panels, strict=True):
        for run in runs:
            ax.plot([r["round"] for r in run.rounds], [100 * a for a in run.accuracies], label=run.run_config["norm"])
        ax.set(title=title, xlabel="round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7)
    _save(plt, figure, path)


def plot_bands(panels: Sequence[tuple[str, dict[str, list[RunResults]]]], path: Path) -> None:
    """Mean test accuracy per round over seeds with a ± std band, one panel per setting."""
    plt, figure, axes = _axes(len(panels))
    for ax, (title, by_norm) in zip(axes, panels, strict=True):
        for norm, runs in by_norm.items():
            if not runs:
                continue
            curves = np.array([[100 * a for a in run.accuracies] for run in runs])
            rounds = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0, ddof=1) if len(runs) > 1 else np.zeros(curves.shape[1])
            ax.plot(rounds, mean, label=f"{norm} (n={len(runs)})")
            ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
        ax.set(title=title, xlabel="round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7)
    _save(plt, figure, path)


def _save(plt, figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


# --- the tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table of docs/results.md: the groups to run, and how to render it (given a plot path)."""

    description: str
    groups: tuple[Group, ...]
    render: Callable[[Path | None], str]


def _norms(groups: tuple[Group, ...]) -> Callable[[Path | None], str]:
    return lambda plot: norms_table(groups, plot)


_DIRICHLET = tuple(_group(f"dir-{s}", s, NORMS, DIRICHLET) for s in ("hetero", "b2-4"))
_STATS_CASES = (("b2-4", False), ("hetero", False), ("hetero", True))
_STATS = tuple(_stats_group(s, m, d) for s, d in _STATS_CASES for m in ("mean", "local"))
_SEEDS = tuple(_seeded(s, seed) for seed in (1, 2) for s in ("b2-4", "hetero"))
_LONG = tuple(
    _group(
        f"long-b2-4{f'-seed{seed}' if seed else ''}",
        "b2-4",
        TOP,
        f"num-server-rounds=40{f' seed={seed}' if seed else ''}",
    )
    for seed in (0, 1, 2)
)
_FULL = (_group("full-hetero", "hetero", TOP, 'dataset="../shared/data/cifar10.npz" num-server-rounds=8'),)

TABLES: dict[str, Table] = {
    "iid": Table("IID, settings (a) (b) (c) x six norms, seed 0", tuple(MAIN.values()), _norms(tuple(MAIN.values()))),
    "dirichlet": Table("Dirichlet alpha=0.5, settings (c) and (b), seed 0", _DIRICHLET, _norms(_DIRICHLET)),
    "stats": Table(
        "stats-aggregation pooled / mean / local for bn and hn, (b) and (c) IID, (c) Dirichlet 0.5, seed 0",
        _STATS,
        lambda plot: stats_table(_STATS_CASES, plot),
    ),
    "calibrate": Table(
        "calibrate-stats (federated precise statistics): check, and its effect in every setting",
        (CHECK_PLAIN, CHECK_CALIBRATED),
        calibrate_table,
    ),
    "seeds": Table(
        "seeds 0, 1, 2 for (b) and (c), IID, bn / gn_g8 / hn: mean ± std",
        _SEEDS,
        lambda plot: seeds_table(
            [(SETTINGS[s][1], [_seeded(s, seed) for seed in (0, 1, 2)]) for s in ("b2-4", "hetero")], plot
        ),
    ),
    "long": Table(
        "setting (b) with 40 rounds instead of 15, IID, bn / gn_g8 / hn, seeds 0, 1, 2: mean ± std",
        _LONG,
        lambda plot: seeds_table([(SETTINGS["b2-4"][1] + ", 40 rounds", _LONG)], plot),
    ),
    "full": Table("full cifar10.npz, setting (c), bn / gn_g8 / hn, seed 0", _FULL, _norms(_FULL)),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("tables", nargs="*", help=f"tables to rebuild: {', '.join(TABLES)}")
    parser.add_argument("--run", action="store_true", help="first run the comparisons that are missing")
    parser.add_argument("--only", nargs="+", metavar="GROUP", help="with --run: run only these groups")
    parser.add_argument("--list", action="store_true", help="list the tables, their groups and commands")
    parser.add_argument("--no-plot", action="store_true", help=f"do not write {PLOTS.relative_to(ROOT)}/<table>.png")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        parser.error(f"unknown tables {unknown}; choose from {', '.join(TABLES)}")
    if args.list or not args.tables:
        for name, table in TABLES.items():
            print(f"{name}: {table.description}")
            for group in table.groups:
                print("    " + shlex.join(group.command()))
        return 0
    for name in args.tables:
        table = TABLES[name]
        if args.run:
            run_groups([g for g in table.groups if not args.only or g.name in args.only])
        plot = None if args.no_plot else PLOTS / f"{name}.png"
        print(f"## {name}: {table.description}\n")
        print(table.render(plot))
        print(f"\n{setup_line(table.groups)}; {wall_times(table.groups)}")
        if plot and plot.is_file():
            print(f"Plot: {plot.relative_to(ROOT)}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
