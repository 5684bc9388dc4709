"""Flower ClientApp: turns a train message into :func:`fedhn.app.task.train_client` and back."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhn.app.config import RunConfig
from fedhn.app.faults import InjectedFault, draw_fault, poison
from fedhn.app.federated_calibration import client_sums
from fedhn.app.task import norm_keys, train_client

app = ClientApp()
LOCAL_NORMS = "local-norms"  # context.state key of the norm layers a FedBN client keeps


@functools.lru_cache(maxsize=4)
def _config(items: frozenset) -> RunConfig:
    return RunConfig.from_mapping(dict(items))


def run_config(mapping: Mapping) -> RunConfig:
    """The validated run config, parsed once per process."""
    return _config(frozenset(mapping.items()))


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for reproducible client sampling)."""
    metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    """Sums of one norm layer's input over the whole partition, for exact pooled statistics."""
    config = run_config(context.run_config)
    sums, examples = client_sums(
        config,
        msg.content["arrays"].to_torch_state_dict(),
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        str(msg.content["config"]["layer"]),
    )
    content = RecordDict({"sums": ArrayRecord(sums), "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = run_config(context.run_config)
    partition_id = int(context.node_config["partition-id"])
    train_config = msg.content["config"]
    server_round = int(train_config["server-round"])
    fault = draw_fault(config.seed, partition_id, server_round, config.fault_rate, config.fault_kinds)
    if fault == "raise":
        raise InjectedFault(f"injected fault (fault-rate): client {partition_id} raised in round {server_round}")
    local = config.stats_aggregation == "local"
    kept = context.state.array_records.get(LOCAL_NORMS) if local else None
    state, result = train_client(
        config,
        msg.content["arrays"].to_torch_state_dict(),
        partition_id,
        int(context.node_config["num-partitions"]),
        server_round,
        float(train_config["lr"]),  # the server owns the schedule
        local_state=kept.to_torch_state_dict() if kept is not None else None,
    )
    if local:
        context.state[LOCAL_NORMS] = ArrayRecord({key: state[key] for key in norm_keys(config)})
    if fault == "nan":
        state = poison(state)
    if fault == "hang":
        time.sleep(config.round_timeout + 1)  # the reply arrives after the server stopped waiting
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "train-loss": result.loss,
            "batch-size": result.batch_size,
            "steps": result.steps,
            "partition-id": partition_id,
        }
    )
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
