"""The ServerApp's record of a run: after every round, the global model's central test accuracy
(also once per feature-shift transformation, and per domain for data with domains), the round's line in
``metrics.jsonl`` (from the strategy's report of the round, with its federated evaluation), TensorBoard
scalars (with ``tensorboard``) and a checkpoint; ``model.pt`` at the end."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from fedhn.app.checkpoint import save_checkpoint
from fedhn.app.config import RunConfig
from fedhn.app.results import RunRecorder, read_results
from fedhn.app.task import feature_shift, test_data, test_data_by_domain
from fedhn.app.tensorboard_log import TensorBoardLog
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
        self.tensorboard = TensorBoardLog(self.recorder.out_dir) if config.tensorboard else None

    def __call__(self, server_round: int, arrays: ArrayRecord, report: RoundReport | None) -> MetricRecord:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy, by_domain = self._evaluate()
        if report is not None:
            record = {
                "round": server_round,
                "test_accuracy": accuracy,
                "test_loss": loss,
                "train_loss": report.train_loss,
                "clients": report.accepted,
                "failed": len(report.dropped),
                "failures": report.dropped,
                "wall_time": round(self.elapsed_before + time.monotonic() - self.started, 3),
            }
            record |= ({"test_accuracy_by_domain": by_domain} if by_domain else {}) | self._shifted() | report.extra
            if report.evaluation is not None:
                record["client_evaluation"] = report.evaluation
            self.recorder.log_round(record)
            if self.tensorboard is not None:
                self.tensorboard.log_round(record, report)
            save_checkpoint(self.recorder.out_dir, server_round, self.model.state_dict(), self.config.to_dict())
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    def _shifted(self) -> dict[str, dict[str, float]]:
        """The central test accuracy and loss of the model under each feature-shift transformation."""
        names = feature_shift(self.config).names
        if not names:
            return {}
        results = {
            name: evaluate(self.model, *test_data(self.config, name), self.config.eval_batch_size) for name in names
        }
        return {
            "shift_accuracy": {name: accuracy for name, (_, accuracy) in results.items()},
            "shift_loss": {name: loss for name, (loss, _) in results.items()},
        }

    def _evaluate(self) -> tuple[float, float, dict[str, float]]:
        """The global model's test loss and accuracy, and its accuracy on each domain's test set (the
        whole set's figures are then the example-weighted combination of the domains')."""
        domains = test_data_by_domain(self.config)
        if not domains:
            return *evaluate(self.model, *test_data(self.config), self.config.eval_batch_size), {}
        results = {name: evaluate(self.model, *data, self.config.eval_batch_size) for name, data in domains.items()}
        sizes = {name: len(labels) for name, (_, labels) in domains.items()}
        total = sum(sizes.values())
        loss = sum(results[name][0] * sizes[name] for name in domains) / total
        correct = sum(round(results[name][1] * sizes[name]) for name in domains)
        return loss, correct / total, {name: accuracy for name, (_, accuracy) in results.items()}

    def close(self) -> str:
        """Save the last global model as ``model.pt``; return the run's summary line."""
        self.recorder.save_model(self.model.state_dict())
        if self.tensorboard is not None:
            self.tensorboard.close()
        return read_results(self.recorder.out_dir).summary()
