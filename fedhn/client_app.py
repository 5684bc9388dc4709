"""Flower ClientApp: turns messages into calls of :mod:`fedhn.app.node` (a node's training round),
:mod:`fedhn.app.client_evaluation` (its clients' evaluation) and :mod:`fedhn.app.federated_calibration`
(statistics), and their results back into messages."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhn import determinism
from fedhn.app.client_evaluation import evaluate_node
from fedhn.app.client_store import ClientStore, store_directory
from fedhn.app.config import RunConfig
from fedhn.app.federated_calibration import node_sums
from fedhn.app.layout import ClientLayout, client_layout
from fedhn.app.node import reply_content, train_node
from fedhn.app.task import TrainingRound
from strategies.replies import CLIENTS

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _config(items: frozenset) -> RunConfig:
    config = RunConfig.from_mapping(dict(items))
    determinism.apply(config.deterministic)  # before this worker's first cuBLAS call
    return config


def run_config(mapping: Mapping) -> RunConfig:
    """The validated run config, parsed once per process, where its process-wide settings
    (:mod:`fedhn.determinism`) take effect: every handler that computes calls this first."""
    return _config(frozenset(mapping.items()))


def _layout(context: Context) -> ClientLayout:
    return client_layout(run_config(context.run_config), int(context.node_config["num-partitions"]))


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, of how many (it hosts the clients the layout gives
    that partition)."""
    metrics = MetricRecord({key: int(context.node_config[key]) for key in ("partition-id", "num-partitions")})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    """Sums of one norm layer's input over the partitions of all the node's clients."""
    layout = _layout(context)
    sums, examples = node_sums(
        run_config(context.run_config),
        msg.content["arrays"].to_torch_state_dict(),
        layout.clients_of(int(context.node_config["partition-id"])),
        layout.clients,
        str(msg.content["config"]["layer"]),
    )
    content = RecordDict({"sums": ArrayRecord(sums), "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the sampled clients the message names; reply with their updates (:mod:`strategies.replies`)."""
    config = run_config(context.run_config)
    train_config = msg.content["config"]
    state = msg.content["arrays"].to_torch_state_dict()
    server_round = int(train_config["server-round"])
    # the server owns the schedule: the round's base lr comes with the message
    training_round = TrainingRound(config, _layout(context).clients, server_round, float(train_config["lr"]))
    node_round = train_node(
        training_round,
        state,
        [int(client) for client in train_config[CLIENTS]],
        ClientStore(context.state, store_directory(context.node_config, train_config), server_round),
    )
    if node_round.hang:
        time.sleep(config.round_timeout + 1)  # the reply arrives after the server stopped waiting
    return Message(content=reply_content(config, state, node_round), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local test split of each sampled client the message names."""
    evaluate_config = msg.content["config"]
    directory = store_directory(context.node_config, evaluate_config)
    content = evaluate_node(
        run_config(context.run_config),
        msg.content["arrays"].to_torch_state_dict(),
        [int(client) for client in evaluate_config[CLIENTS]],
        _layout(context).clients,
        # the state clients wrote up to this round (evaluation follows the round's training)
        ClientStore(context.state, directory, int(evaluate_config["server-round"]) + 1),
    )
    return Message(content=content, reply_to=msg)
