"""Flower ServerApp: validates the run, then runs :class:`strategies.StatsFedAvg` with the server's
per-round learning rate, federated calibration (:mod:`fedhn.app.federated_calibration`) and a
record of every round (:mod:`fedhn.app.round_log`)."""

from __future__ import annotations

import functools
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedhn import determinism
from fedhn.app.checkpoint import restore
from fedhn.app.client_store import TRAIN_STATE_DIR, client_state_dir, drop_versions_after
from fedhn.app.config import ConfigError, RunConfig
from fedhn.app.federated_calibration import FederatedCalibration
from fedhn.app.layout import client_layout
from fedhn.app.nodes import QUERY_TIMEOUT, PartitionDirectory, error_summary
from fedhn.app.preflight import run_problems
from fedhn.app.results import with_output_dir
from fedhn.app.round_log import RoundLog
from fedhn.app.schedule import round_lr
from fedhn.app.task import new_model
from strategies import StatsFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = with_output_dir(RunConfig.from_mapping(context.run_config))
    determinism.apply(config.deterministic)
    if problems := run_problems(config, num_partitions=len(list(grid.get_node_ids())) * config.clients_per_node):
        raise ConfigError.listing(problems)
    torch.manual_seed(config.seed)
    model = new_model(config)
    first_round = restore(config, model)
    state_dir = client_state_dir(config.out_dir)
    drop_versions_after(state_dir, first_round - 1)  # client state of rounds the checkpoint does not cover
    # the first query starts the ClientApps (Ray workers, imports): it may take as long as a round
    nodes = PartitionDirectory(
        functools.partial(client_layout, config), timeout=max(QUERY_TIMEOUT, config.round_timeout)
    )
    strategy = StatsFedAvg(
        stats_aggregation=config.stats_aggregation,
        round_config=lambda server_round: {"lr": round_lr(config, server_round), TRAIN_STATE_DIR: str(state_dir)},
        first_round=first_round,
        sampling_seed=config.seed,
        clients_of=nodes.clients,
        error_summary=error_summary,
        after_aggregation=FederatedCalibration(grid, config, model),
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_evaluate_nodes=1,
        min_train_nodes=config.min_train_nodes,
        min_available_nodes=math.ceil(config.min_train_nodes / config.clients_per_node),
    )
    round_log = RoundLog(config, model)
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.num_server_rounds - first_round + 1,
            timeout=config.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=round_log,
        )
    finally:
        summary = round_log.close()
    print(f"fedhn: {summary}", flush=True)
