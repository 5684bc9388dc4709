"""The ServerApp's record of a run: after every round, the global model's central test accuracy,
the round's line in ``metrics.jsonl`` (from the strategy's report of the round) and a checkpoint;
``model.pt`` at the end."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from fedhn.app.checkpoint import save_checkpoint
from fedhn.app.config import RunConfig
from fedhn.app.results import RunRecorder, read_results
from fedhn.app.task import test_data
from fedhn.training import evaluate
from strategies import RoundReport

__all__ = ["RoundLog"]


class RoundLog:
    """The ``evaluate_fn`` of :meth:`strategies.StatsFedAvg.start`, writing into ``config.out_dir``.

    ``model`` is the server's scratch model: each call loads the global arrays into it, and
    :meth:`close` saves the last of them as ``model.pt``.
    """

    def __init__(self, config: RunConfig, model: nn.Module) -> None:
        self.config, self.model = config, model
        self.recorder = RunRecorder(config.out_dir, config.to_dict())
        previous = read_results(self.recorder.out_dir).rounds
        self.elapsed_before = previous[-1]["wall_time"] if previous else 0.0  # of a resumed run
        self.started = time.monotonic()

    def __call__(self, server_round: int, arrays: ArrayRecord, report: RoundReport | None) -> MetricRecord:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        images, labels = test_data(self.config)
        loss, accuracy = evaluate(self.model, images, labels, self.config.eval_batch_size)
        if report is not None:
            self.recorder.log_round(
                {
                    "round": server_round,
                    "test_accuracy": accuracy,
                    "test_loss": loss,
                    "train_loss": report.train_loss,
                    "clients": report.accepted,
                    "failed": len(report.dropped),
                    "failures": report.dropped,
                    "wall_time": round(self.elapsed_before + time.monotonic() - self.started, 3),
                }
                | report.extra
            )
            save_checkpoint(self.recorder.out_dir, server_round, self.model.state_dict(), self.config.to_dict())
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    def close(self) -> str:
        """Save the last global model as ``model.pt``; return the run's summary line."""
        self.recorder.save_model(self.model.state_dict())
        return read_results(self.recorder.out_dir).summary()
