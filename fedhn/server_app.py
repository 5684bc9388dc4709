"""Flower ServerApp: validates the run, runs :class:`strategies.StatsFedAvg` with centralized
evaluation and a checkpoint after every round, and records the results (:mod:`fedhn.app.results`)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from torch import Tensor

from fedhn.app.checkpoint import restore, save_checkpoint
from fedhn.app.config import ConfigError, RunConfig
from fedhn.app.results import RunRecorder, read_results
from fedhn.app.task import new_model, round_lr, run_problems, test_data
from fedhn.calibration import apply_sums, calibration_order, pool_sums
from fedhn.training import evaluate
from strategies import StatsFedAvg

app = ServerApp()


def with_output_dir(config: RunConfig) -> RunConfig:
    """The config with ``out-dir`` set: ``outputs/<time>-<model>-<norm>`` when it is empty."""
    if config.out_dir:
        return config
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{config.model}-{config.norm}".replace("=", "").replace(",", "_")
    return dataclasses.replace(config, out_dir=str(Path("outputs") / name))


def request_statistics(grid: Grid, arrays: ArrayRecord, layer: str, timeout: float) -> list[dict[str, Tensor]]:
    """Ask every node for the sums of ``layer``'s input over its data under the global model
    (``query.calibrate``)."""
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"layer": layer})})
    messages = [
        Message(content=content, dst_node_id=node, message_type=f"{MessageType.QUERY}.calibrate")
        for node in grid.get_node_ids()
    ]
    sums = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(WARNING, "Calibration: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason[-300:])
        else:
            sums.append(reply.content["sums"].to_torch_state_dict())
    return sums


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = with_output_dir(RunConfig.from_mapping(context.run_config))
    problems = run_problems(config, num_partitions=len(list(grid.get_node_ids())))
    if problems:
        raise ConfigError.listing(problems)
    torch.manual_seed(config.seed)
    model = new_model(config)
    first_round = restore(config, model)
    recorder = RunRecorder(config.out_dir, config.to_dict())
    previous = read_results(recorder.out_dir).rounds
    elapsed_before = previous[-1]["wall_time"] if previous else 0.0
    images, labels = test_data(config)
    calibration: dict[str, float] = {}

    def recalibrate(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """With calibrate-stats, replace the running statistics by the exact ones of the clients' data."""
        due = server_round == config.num_server_rounds or (
            config.calibrate_every and server_round % config.calibrate_every == 0
        )
        order = calibration_order(model, images[:1]) if config.calibrate_stats and due else []
        if not order:
            return arrays
        model.load_state_dict(arrays.to_torch_state_dict())
        calibration["test_accuracy_before"] = evaluate(model, images, labels, config.eval_batch_size)[1]
        replies = []
        for layer in order:  # in forward order: each layer's input is made with the layers before it calibrated
            parts = request_statistics(grid, ArrayRecord(model.state_dict()), layer, config.round_timeout)
            if not parts:
                log(WARNING, "Calibration of round %d abandoned at layer %s: no client replied", server_round, layer)
                calibration.clear()
                return arrays
            apply_sums(model, pool_sums(parts))
            replies.append(len(parts))
        calibration.update(clients=min(replies), layers=len(order))
        return ArrayRecord(model.state_dict())

    strategy = StatsFedAvg(
        stats_aggregation=config.stats_aggregation,
        round_config=lambda server_round: {"lr": round_lr(config, server_round)},
        first_round=first_round,
        sampling_seed=config.seed,
        after_aggregation=recalibrate,
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=config.min_train_nodes,
        min_available_nodes=config.min_train_nodes,
    )
    started = time.monotonic()

    def evaluate_global(step: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, images, labels, config.eval_batch_size)
        if step > 0:
            server_round, report = first_round - 1 + step, strategy.last_round
            recorder.log_round(
                {
                    "round": server_round,
                    "test_accuracy": accuracy,
                    "test_loss": loss,
                    "train_loss": report.train_loss,
                    "clients": report.accepted,
                    "failed": len(report.dropped),
                    "failures": report.dropped,
                    "wall_time": round(elapsed_before + time.monotonic() - started, 3),
                }
                | ({"calibration": dict(calibration)} if calibration else {})
            )
            calibration.clear()
            save_checkpoint(recorder.out_dir, server_round, model.state_dict(), config.to_dict())
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.num_server_rounds - first_round + 1,
            timeout=config.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate_global,
        )
    finally:
        recorder.save_model(model.state_dict())  # the last global model evaluate_global loaded
    print(f"fedhn: {read_results(recorder.out_dir).summary()}", flush=True)
