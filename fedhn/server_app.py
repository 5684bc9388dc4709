"""Flower ServerApp: validates the run config, runs :class:`strategies.StatsFedAvg` with centralized
evaluation after every round, and records the results (:mod:`fedhn.results`)."""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedhn.config import ConfigError, RunConfig
from fedhn.results import RunRecorder, read_results
from fedhn.task import new_model, round_lr, run_problems, test_data
from fedhn.training import evaluate
from strategies import StatsFedAvg

app = ServerApp()


def output_dir(config: RunConfig) -> Path:
    """``out-dir``, or ``outputs/<time>-<model>-<norm>`` when it is empty."""
    if config.out_dir:
        return Path(config.out_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / f"{stamp}-{config.model}-{config.norm}".replace("=", "").replace(",", "_")


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    problems = run_problems(config, num_partitions=len(list(grid.get_node_ids())))
    if problems:
        raise ConfigError("Invalid run config:\n" + "\n".join(f"  - {p}" for p in problems))
    random.seed(config.seed)  # Flower samples clients with the random module
    torch.manual_seed(config.seed)
    recorder = RunRecorder(output_dir(config), config.to_dict())
    model = new_model(config)
    images, labels = test_data(config)
    strategy = StatsFedAvg(
        stats_aggregation=config.stats_aggregation,
        round_config=lambda server_round: {"lr": round_lr(config, server_round)},
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=config.min_train_nodes,
        min_available_nodes=config.min_train_nodes,
    )
    started = time.monotonic()

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, images, labels, config.eval_batch_size)
        if server_round > 0:
            report = strategy.last_round
            recorder.log_round(
                {
                    "round": server_round,
                    "test_accuracy": accuracy,
                    "test_loss": loss,
                    "train_loss": report.train_loss,
                    "clients": report.accepted,
                    "failed": len(report.dropped),
                    "failures": report.dropped,
                    "aggregated": report.aggregated,
                    "wall_time": round(time.monotonic() - started, 3),
                }
            )
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.num_server_rounds,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate_global,
        )
    finally:
        recorder.save_model(model.state_dict())  # the last global model evaluate_global loaded
    print(f"fedhn: {read_results(recorder.out_dir).summary()}", flush=True)
