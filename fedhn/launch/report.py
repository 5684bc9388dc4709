"""Comparison reports: ``summary.md`` (a table per run) and ``accuracy.png`` (test accuracy per round)."""

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
    return "\n".join(lines) + "\n"


def plot_accuracy(runs: Sequence[RunResults], path: Path, title: str = "") -> Path:
    """Test accuracy per round, one line per run."""
    import matplotlib.ticker

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        axes.plot([r["round"] for r in run.rounds], run.accuracies, marker="o", markersize=3, label=_label(run))
    axes.set(xlabel="round", ylabel="test accuracy", title=title)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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
