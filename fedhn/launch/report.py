"""Comparison reports: ``summary.md`` (a table of the runs; with per-client evaluation or feature
shift also their tables) and ``accuracy.png`` (central test accuracy per round, beside the clients'
accuracy when they evaluated)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedhn.app.results import RunResults
from fedhn.plotting import pyplot

__all__ = ["summary_table", "plot_accuracy", "write_report"]


def _label(run: RunResults) -> str:
    return str(run.run_config.get("norm", run.out_dir.name))


def summary_table(runs: Sequence[RunResults], failed: dict[str, str] | None = None) -> str:
    """A Markdown table: norm, final and best test accuracy, rounds, wall time (and failed runs)."""
    lines = [
        "| norm | final accuracy | best accuracy (round) | rounds | time (s) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        if not run.rounds:
            lines.append(f"| {_label(run)} | - | - | 0/{run.run_config.get('num-server-rounds')} | - |")
            continue
        best_accuracy, best_round = run.best
        lines.append(
            f"| {_label(run)} | {run.final_accuracy:.4f} | {best_accuracy:.4f} ({best_round}) | "
            f"{len(run.rounds)}/{run.run_config.get('num-server-rounds')} | {run.wall_time:.1f} |"
        )
    for norm, reason in (failed or {}).items():
        lines.append(f"| {norm} | FAILED: {reason} | | | |")
    return "\n".join(lines + _client_table(runs) + _shift_table(runs)) + "\n"


def _client_table(runs: Sequence[RunResults]) -> list[str]:
    """Central and per-client accuracy side by side, at each run's last evaluated round."""
    evaluated = [run for run in runs if run.client_rounds]
    if not evaluated:
        return []
    lines = [
        "",
        "Per-client evaluation (each client's local test split), last evaluated round:",
        "",
        "| norm | round | central accuracy | client accuracy (weighted) | mean | worst 10% | clients |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in evaluated:
        last = run.client_rounds[-1]
        clients = last["client_evaluation"]
        lines.append(
            f"| {_label(run)} | {last['round']} | {last['test_accuracy']:.4f} | {clients['accuracy']:.4f} | "
            f"{clients['mean_accuracy']:.4f} | {clients['worst_10pct_accuracy']:.4f} | {clients['clients']} |"
        )
    return lines


def _shift_table(runs: Sequence[RunResults]) -> list[str]:
    """The final central test accuracy untransformed and under each feature-shift transformation."""
    shifted = [run for run in runs if run.rounds and run.rounds[-1].get("shift_accuracy")]
    if not shifted:
        return []
    names = list(dict.fromkeys(name for run in shifted for name in run.rounds[-1]["shift_accuracy"]))
    lines = [
        "",
        "Central test accuracy per feature-shift transformation, final round:",
        "",
        "| norm | untransformed | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for run in shifted:
        accuracies = run.rounds[-1]["shift_accuracy"]
        cells = [f"{accuracies[name]:.4f}" if name in accuracies else "-" for name in names]
        lines.append(f"| {_label(run)} | {run.final_accuracy:.4f} | " + " | ".join(cells) + " |")
    return lines


def plot_accuracy(runs: Sequence[RunResults], path: Path, title: str = "") -> Path:
    """Central test accuracy per round, one line per run; when clients evaluated, beside it their
    example-weighted accuracy (solid) and the worst 10% (dotted) in the same colours."""
    import matplotlib.ticker

    plt = pyplot()
    with_clients = any(run.client_rounds for run in runs)
    figure, panels = plt.subplots(
        1, 2 if with_clients else 1, figsize=(11 if with_clients else 6.4, 4.2), squeeze=False, sharey=True
    )
    central = panels[0][0]
    for run in runs:
        line = central.plot(
            [r["round"] for r in run.rounds], run.accuracies, marker="o", markersize=3, label=_label(run)
        )
        if with_clients and run.client_rounds:
            _plot_clients(panels[0][1], run, line[0].get_color())
    central.set(xlabel="round", ylabel="test accuracy", title="central test set" if with_clients else title)
    if with_clients:
        panels[0][1].set(xlabel="round", title="clients (local test splits): weighted, worst 10% dotted")
        figure.suptitle(title)
    for axes in panels[0]:
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_clients(axes, run: RunResults, color: str) -> None:
    rounds = [r["round"] for r in run.client_rounds]
    evaluations = [r["client_evaluation"] for r in run.client_rounds]
    axes.plot(rounds, [e["accuracy"] for e in evaluations], marker="o", markersize=3, color=color, label=_label(run))
    worst = [e["worst_10pct_accuracy"] for e in evaluations]
    axes.plot(rounds, worst, linestyle=":", color=color, label=f"{_label(run)} worst 10%")


def write_report(runs: Sequence[RunResults], out_dir: Path, failed: dict[str, str] | None = None) -> str:
    """Write summary.md and accuracy.png into ``out_dir``; return the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, failed)
    config = runs[0].run_config if runs else {}
    title = f"{config.get('model', '')} on {config.get('dataset', '')}".strip()
    header = f"# {title}\n\n" if runs else "# fedhn comparison\n\n"
    (out_dir / "summary.md").write_text(header + table)
    if runs:
        plot_accuracy(runs, out_dir / "accuracy.png", title)
    return table
