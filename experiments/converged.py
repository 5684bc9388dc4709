"""Converged federated runs on resnet10 (issue #15 part 2): the grid, its runs and its tables.

    python -m experiments.converged                 # the tables from the committed runs (docs/results/converged)
    python -m experiments.converged --run           # first run what is missing, in grid order (resumes partial runs)
    python -m experiments.converged --run --only b2-4/hn_g8-s0 b2-4/bn-s0
    python -m experiments.converged --list          # every run of the grid and its fedhn compare command

A run is one ``fedhn compare`` of one method in one setting with one seed, into
``docs/results/converged/<setting>/<method>-s<seed>``; only its ``metrics.jsonl`` and ``config.json`` are
committed (.gitignore), which is all the tables read. The data is a class-balanced subset of
../shared/data/cifar10.npz, written once to ``outputs/data`` (the same files every time). Priority 1 (three
seeds): bn, gn_g8, hn, hn_g8 and FixBN at batch 2-4 (IID) and 2..128 (Dirichlet 0.1); priority 2 (seed 0):
FedWon, frn, brn, FedBN there, bn and hn_g8 at a larger lr (three seeds at batch 2-4, one at 2..128), batch 128 as the
control, Dirichlet 0.5 and feature-shift clients.

A run has *plateaued* when the best test accuracy of its last 5 rounds is within 0.5 points of its best and
a least-squares line through its last 5 rounds rises less than 0.2 points per round; its plateau starts at
the first round within 0.5 points of its best.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.reproduce import ROOT, Group, complete, mean_std, plot_bands, run_groups
from fedhn.app.checkpoint import config_changes
from fedhn.app.config import RunConfig
from fedhn.app.results import RunResults
from fedhn.launch.compare import configure_runs, parse_run_config_args

CONFIG = "configs/converged.toml"
RUNS = ROOT / "docs" / "results" / "converged"
TABLE = ROOT / "docs" / "results" / "converged.md"
SOURCE = ROOT.parent / "shared" / "data" / "cifar10.npz"
PER_CLASS = 2500  # training images of each class: 25,000, of which clients train on 80% (20,000)
DATA = ROOT / "outputs" / "data" / f"cifar10-{10 * PER_CLASS}.npz"
ROUNDS = tomllib.loads((ROOT / CONFIG).read_text())["num-server-rounds"]
CLIENTS_PER_NODE = 5
FEDERATION = ("--num-supernodes", "2", "--clients-per-node", str(CLIENTS_PER_NODE), "--cpus-per-client", "1")


@dataclass(frozen=True)
class Setting:
    """Clients' batches and data split: run-config overrides of the config, a label, the number of rounds."""

    overrides: str
    label: str
    rounds: int = ROUNDS


SETTINGS = {
    "b2-4": Setting('batch-sizes="2,4"', "batch 2-4, IID"),
    # 30 rounds did not plateau here (docs/results/converged-pilot/hetero): drift-limited, it still gained
    # while the learning rate decayed
    "hetero": Setting(
        'batch-sizes="2,4,8,16,32,64,128" partitioner="dirichlet" dirichlet-alpha=0.1', "batch 2..128, Dir 0.1", 50
    ),
    "b128": Setting('batch-sizes="128"', "batch 128, IID"),
    "dir0.5": Setting('batch-sizes="2,4" partitioner="dirichlet" dirichlet-alpha=0.5', "batch 2-4, Dir 0.5"),
    "shift": Setting('batch-sizes="2,4" feature-shift="auto"', "batch 2-4, feature shift"),
}
# FedWon's learning rate per setting. Norm-free nets want a larger one than the normalized nets' 0.1, and its best
# does not scale linearly with the batch (central sweeps, docs/results/central.md, lr per batch 128): 1.6 at
# batch 2-4 (5 epochs at batch 4: 29.3 % at 0.1, 49.7 at 1.6, 25.5 at 3.2), 0.4 at batch 128 (56.4 %; 1.6
# diverges). Batches 2..128 take the square-root rule at 0.2: batch 2 gets linear 1.6's 0.025, batch 4 0.035
# (48.1 % in 5 epochs), batch 128 0.2 (53.8 % in 15 epochs, 2.6 under 0.4); sqrt at 0.3 fell to 30.5 % at batch 2.
FEDWON_LR = {
    "b2-4": "lr=1.6",
    "hetero": 'lr-scaling="sqrt" lr=0.2',
    "b128": "lr=0.4",
    "dir0.5": "lr=1.6",
    "shift": "lr=1.6",
}
# method -> (norm spec, run-config overrides, where {half_rounds} is half the setting's rounds and {fedwon_lr}
# the setting's FEDWON_LR); fedhn.baselines says what each baseline does
METHODS = {
    "bn": ("bn", ""),
    "gn_g8": ("gn_g8", ""),
    "hn": ("hn", ""),
    "hn_g8": ("hn_g8", ""),
    "fixbn": ("bn", "freeze-stats-after={half_rounds}"),
    "fedwon": ("none", 'conv="ws" agc-clip=0.16 {fedwon_lr}'),
    "frn": ("frn", ""),
    "brn": ("brn", ""),
    "fedbn": ("bn", 'stats-aggregation="local"'),
}
# bn and hn_g8 at a 4 times larger lr than the paper's 0.1, as FedWon has its own tuned one: centrally at batch 4
# (5 epochs) bn gained 2.7-4.3 points from 0.4-0.8 and hn_g8 2.4 from 0.4 (docs/results/central.md)
LARGER_LR = 0.4
LR_PROBES = {f"{norm}_lr{LARGER_LR}": (norm, f"lr={LARGER_LR}") for norm in ("bn", "hn_g8")}
METHODS.update(LR_PROBES)
PRIORITY_1 = ("bn", "hn_g8", "gn_g8", "hn", "fixbn")
PRIORITY_2 = ("fedwon", "frn", "brn", "fedbn")
# The headline pairs: (method, reference) compared seed by seed; HN against BN at the larger lr too
PAIRS = tuple((hn, other) for hn in ("hn_g8", "hn") for other in ("bn", "gn_g8", "fixbn")) + (
    tuple(reversed(LR_PROBES)),
)


@dataclass(frozen=True)
class Run:
    """One method in one setting with one seed."""

    setting: str
    method: str
    seed: int
    pilot: bool = False  # a run of a pilot (PILOTS, docs/results/converged-pilot), read only

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.method}-s{self.seed}"

    @property
    def group(self) -> Group:
        norm, method_overrides = METHODS[self.method]
        setting = SETTINGS[self.setting]
        parts = (
            f'dataset="{DATA.relative_to(ROOT)}"',
            setting.overrides,
            "" if setting.rounds == ROUNDS else f"num-server-rounds={setting.rounds}",
            method_overrides.format(half_rounds=setting.rounds // 2, fedwon_lr=FEDWON_LR[self.setting]),
        )
        overrides = " ".join(part for part in parts if part)
        root = RUNS.with_name(RUNS.name + "-pilot") if self.pilot else RUNS
        return Group(self.name, CONFIG, setting.label, (norm,), f"{overrides} seed={self.seed}", root, FEDERATION)

    def config(self) -> RunConfig:
        """The run's validated run config (raises ConfigError naming what is wrong)."""
        group = self.group
        overrides = parse_run_config_args([str(ROOT / group.config), group.overrides])
        overrides["clients-per-node"] = CLIENTS_PER_NODE  # what fedhn compare's --clients-per-node sets
        return configure_runs(ROOT, group.norms, overrides, group.out_dir)[group.norms[0]]

    def results(self) -> RunResults | None:
        """The run's results on disk, or None before its first round."""
        runs = list(self.group.runs().values())
        return runs[0] if runs and runs[0].rounds else None

    def stale(self, results: RunResults) -> str:
        """How the config the run on disk ran with differs from the run's definition now (empty if it does not;
        the dataset compared by file name, as the checkout's path may differ)."""
        current = self.config().to_dict()
        saved = dict(results.run_config)
        saved["dataset"], current["dataset"] = Path(saved.get("dataset", "")).name, Path(current["dataset"]).name
        return config_changes(saved, current)

    def finished_results(self) -> RunResults | None:
        """The run's results once it has run all its rounds with its definition's config, else None."""
        results = self.results()
        return results if results is not None and complete(results) and not self.stale(results) else None

    def finished(self) -> bool:
        return self.finished_results() is not None


GRID: tuple[Run, ...] = (
    tuple(Run(s, m, seed) for seed in (0, 1, 2) for s in ("b2-4", "hetero") for m in PRIORITY_1)
    + tuple(Run(s, m, 0) for s in ("b2-4", "hetero") for m in PRIORITY_2)
    # three seeds: at lr 0.4 (seed 0) bn and hn_g8 both gained 7 points, so these say whether HN's lead holds there
    + tuple(Run("b2-4", m, seed) for seed in (0, 1, 2) for m in LR_PROBES)
    # at batch 2-4 HN's lead held at lr 0.4 on all three seeds; these say whether the rate matters under label skew
    + tuple(Run("hetero", m, 0) for m in LR_PROBES)
    + tuple(Run("b128", m, 0) for m in ("bn", "gn_g8", "hn", "hn_g8"))
    + tuple(Run(s, m, 0) for s in ("dir0.5", "shift") for m in ("bn", "hn_g8", "fixbn", "fedbn"))
)

# The pilots, seed 0, read only: (setting, methods), run with fewer rounds than the setting has now (their
# config.json says how many). b2-4 at 20 rounds sized the grid (bn had not plateaued); hetero at 30 rounds
# had not plateaued either (hn_g8's last 5 rounds rose 0.7 points a round).
PILOTS = (("b2-4", ("bn", "hn_g8")), ("hetero", ("bn", "hn_g8")))


def write_subset(source: Path = SOURCE, target: Path = DATA, per_class: int = PER_CLASS) -> Path:
    """The first ``per_class`` training images of every class of ``source`` (in file order) and its whole
    test set, as ``target`` (skipped when it exists)."""
    if target.is_file():
        return target
    if not source.is_file():
        raise SystemExit(f"{source} does not exist: the converged runs need ../shared/data/cifar10.npz")
    data = np.load(source)
    labels = data["y_train"]
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, x_train=data["x_train"][keep], y_train=labels[keep], x_test=data["x_test"], y_test=data["y_test"])
    return target


# --- reading runs ------------------------------------------------------------------------------------


class Plateau(NamedTuple):
    """The plateau rule's verdict on one run."""

    reached: bool
    start: int  # the first round within 0.5 points of the run's best
    slope: float | None  # of a least-squares line through the last 5 rounds, per round; None if shorter


def plateau(accuracies: Sequence[float], window: int = 5) -> Plateau:
    """The plateau rule (module docstring) applied to a run's accuracies, as fractions."""
    best = max(accuracies)
    start = next(r for r, a in enumerate(accuracies, 1) if a >= best - 0.005)
    if len(accuracies) < window:
        return Plateau(False, start, None)
    last = np.asarray(accuracies[-window:])
    slope = float(np.polyfit(np.arange(window), last, 1)[0])
    return Plateau(bool(last.max() >= best - 0.005 and slope < 0.002), start, slope)


def seconds_per_round(run: RunResults) -> float:
    """The median wall time of the rounds after the first (which starts Flower and Ray)."""
    times = [r["wall_time"] for r in run.rounds]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False) if b > a)


def client_accuracy(run: RunResults, key: str) -> float | None:
    """The last round's per-client ``key`` (``mean_accuracy``, ``worst_10pct_accuracy``), if evaluated."""
    rounds = run.client_rounds
    return rounds[-1]["client_evaluation"][key] if rounds else None


def finished(runs: Sequence[Run]) -> dict[Run, RunResults]:
    """The finished ``runs`` and their results (each run's files read once)."""
    return {run: results for run in runs if (results := run.finished_results()) is not None}


def settings_table(done: dict[Run, RunResults]) -> str:
    """Rows: methods; cells over the seeds of the finished runs ``done`` of one setting: mean ± std of
    central final and best accuracy, per-client mean and worst 10%, the plateau, seconds per round."""
    lines = [
        "| method | runs | final | best | plateaued | plateau from round | last-5 slope (points / round) "
        "| client mean | client worst 10% | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        runs = [results for run, results in done.items() if run.method == method]
        if not runs:
            continue
        plateaus = [plateau(r.accuracies) for r in runs]
        cells = [
            str(len(runs)),
            mean_std([r.final_accuracy for r in runs]),
            mean_std([r.best[0] for r in runs]),
            f"{sum(p.reached for p in plateaus)}/{len(runs)}",
            "/".join(str(p.start) for p in plateaus),
            "/".join("-" if p.slope is None else f"{round(100 * p.slope, 2) + 0.0:.2f}" for p in plateaus),  # no -0.00
            mean_std([client_accuracy(r, "mean_accuracy") for r in runs if r.client_rounds]),
            mean_std([client_accuracy(r, "worst_10pct_accuracy") for r in runs if r.client_rounds]),
            f"{statistics.fmean(seconds_per_round(r) for r in runs):.0f}",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(done: dict[Run, RunResults]) -> str:
    """The headline pairs seed by seed over the finished runs ``done`` of one setting: final accuracy of
    the method minus the reference's, in points (empty without a pair)."""
    by_key = {(r.method, r.seed): results for r, results in done.items()}
    lines = ["| pair | per seed (points) | mean |", "|---|---|---|"]
    for method, reference in PAIRS:
        seeds = sorted(s for m, s in by_key if m == method and (reference, s) in by_key)
        if not seeds:
            continue
        gaps = [by_key[method, s].final_accuracy - by_key[reference, s].final_accuracy for s in seeds]
        per_seed = ", ".join(f"s{s} {100 * g:+.1f}" for s, g in zip(seeds, gaps, strict=True))
        lines.append(f"| {method} - {reference} | {per_seed} | {100 * statistics.fmean(gaps):+.1f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def report(plot_dir: Path | None = RUNS.parent) -> str:
    """The markdown of every setting with finished runs (and its plot ``converged-<setting>.png``)."""
    parts = [
        "# Converged federated runs\n",
        f"Written by `python -m experiments.converged` from docs/results/converged: resnet10, 10 clients, "
        f"rounds of 1 local epoch (as many as each title says), {10 * PER_CLASS:,} CIFAR-10 training images (clients train on "
        "80% and evaluate on 20%), the full test set. Accuracies in %, mean ± std over the seeds (n = runs); "
        "client accuracies are the last round's per-client evaluation; plateau as defined in the module; "
        "s / round is the median wall time of rounds 2 on, on the machine as it was (compare only runs that "
        "ran under the same load).\n",
    ]
    sections = [(s.label, f"converged-{name}", [r for r in GRID if r.setting == name]) for name, s in SETTINGS.items()]
    sections += [
        (f"Pilot: {SETTINGS[name].label}", f"converged-pilot-{name}", [Run(name, m, 0, pilot=True) for m in methods])
        for name, methods in PILOTS
    ]
    for label, plot_name, runs in sections:
        done = finished(runs)
        if not done:
            continue
        rounds = sorted({int(results.run_config["num-server-rounds"]) for results in done.values()})
        title = f"{label}, {'/'.join(map(str, rounds))} rounds"
        pairs = paired_table(done)
        parts += [f"## {title}\n", settings_table(done), ""] + ([pairs, ""] if pairs else [])
        if plot_dir is not None:
            plot = plot_dir / f"{plot_name}.png"
            by_method: dict[str, list[RunResults]] = {}
            for run, results in done.items():
                by_method.setdefault(run.method, []).append(results)
            plot_bands([(title, by_method)], plot)
            parts += [f"![{title}]({plot.relative_to(TABLE.parent)})", ""]
    pending = [r.name for r in GRID if not r.finished()]
    parts.append(f"Runs of the grid not finished yet: {len(pending)} of {len(GRID)}.")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.converged", description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true", help="first run the grid's runs that are not finished")
    parser.add_argument(
        "--only", nargs="+", metavar="RUN", help="with --run: only these runs (<setting>/<method>-s<seed>)"
    )
    parser.add_argument("--list", action="store_true", help="list the grid's runs and their commands")
    args = parser.parse_args(argv)
    names = {r.name for r in GRID}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown runs {unknown}; --list shows the grid (e.g. {GRID[0].name})")
    if args.list:
        for run in GRID:
            results = run.results()
            changes = run.stale(results) if results is not None else ""
            state = f"stale: {changes}" if changes else "finished" if run.finished() else "to run"
            print(f"{run.name} ({state}):\n    {shlex.join(run.group.command())}")
        return 0
    if args.run:
        todo = [run for run in GRID if (not args.only or run.name in args.only) and not run.finished()]
        for run in todo:  # every config checked before the first run starts
            run.config()
            results = run.results()
            if results is not None and (changes := run.stale(results)):
                parser.error(
                    f"{run.name} on disk ran with another config ({changes}); "
                    f"remove {run.group.out_dir.relative_to(ROOT)} (git rm -r) to run it anew"
                )
        write_subset()
        run_groups([run.group for run in todo])
    text = report()
    TABLE.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
