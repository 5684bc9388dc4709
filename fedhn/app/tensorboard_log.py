"""TensorBoard event files of a run (run-config key ``tensorboard``), written into its out-dir so
that ``tensorboard --logdir`` on a ``fedhn compare`` directory overlays its runs (one per norm).

Per round: ``central/*`` (test accuracy and loss, and per feature-shift transformation),
``train/loss``, ``clients/*`` (the federated evaluation: weighted, mean and worst-10% accuracy,
loss), ``client/<c>/*`` (each client's test accuracy and loss, batch size, steps, train loss) and
``stat_spread/<buffer>`` (the running statistics' spread across the round's clients).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strategies import RoundReport

__all__ = ["TENSORBOARD_MISSING", "TensorBoardLog", "tensorboard_available"]

TENSORBOARD_MISSING = (
    "tensorboard = true needs the tensorboard package: pip install -e '.[tensorboard]' (or set tensorboard = false)"
)


def tensorboard_available() -> bool:
    """Whether torch.utils.tensorboard can write event files here."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Writes each round's scalars into ``out_dir`` with torch.utils.tensorboard."""

    def __init__(self, out_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir))

    def log_round(self, record: Mapping[str, Any], report: RoundReport) -> None:
        """The scalars of one round: its ``metrics.jsonl`` line and the strategy's report of it."""
        step = int(record["round"])
        scalars = {"central/accuracy": record["test_accuracy"], "central/loss": record["test_loss"]}
        scalars |= {f"central/accuracy_{name}": value for name, value in record.get("shift_accuracy", {}).items()}
        scalars |= {f"central/loss_{name}": value for name, value in record.get("shift_loss", {}).items()}
        if report.train_loss is not None:
            scalars["train/loss"] = report.train_loss
        evaluation = report.evaluation or {}
        for key in ("accuracy", "loss", "mean_accuracy", "worst_10pct_accuracy"):
            if key in evaluation:
                scalars[f"clients/{key}"] = evaluation[key]
        scalars |= {f"client/{c}/accuracy": value for c, value in evaluation.get("accuracies", {}).items()}
        scalars |= {f"client/{c}/loss": value for c, value in evaluation.get("losses", {}).items()}
        for client, metrics in report.client_train.items():
            for key in ("batch-size", "steps", "train-loss"):
                if key in metrics:
                    scalars[f"client/{client}/{key.replace('-', '_')}"] = metrics[key]
        scalars |= {f"stat_spread/{key}": value for key, value in report.stat_spread.items()}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
