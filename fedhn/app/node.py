"""A node's training round: the sampled clients it hosts, with their injected faults and FedBN
state, and the node's reply (every client's update, or the exact partial aggregate of its clients).

Every client trains exactly as it would alone (its own partition, batch size, learning rate and
random generator), several at once packed into one cohort (:mod:`fedhn.cohort`, run-config key
``pack-clients``); a client that fails (an injected ``raise``, a diverged loss) has no update and
its reason travels in the reply, the node's other clients stay. A client whose injected fault is
``hang`` delays the node's whole reply past ``round-timeout``, so every client of that node misses
the round (the server records each as "no reply within the round timeout").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

from fedhn.app.client_store import ClientStore
from fedhn.app.config import RunConfig
from fedhn.app.faults import draw_fault, poison
from fedhn.app.task import TrainingRound, dataset, norm_keys, train_client, train_packed_clients
from fedhn.training import TrainResult
from strategies import partial_aggregate
from strategies.replies import check_update, node_reply

__all__ = ["LOCAL_NORMS", "NODE_AGGREGATION_BYTES", "NodeRound", "reply_content", "train_node"]

LOCAL_NORMS = "local-norms"  # ClientStore name of the norm layers a FedBN client keeps
NODE_AGGREGATION_BYTES = 256 * 2**20  # above this many bytes of client updates a node sends its partial aggregate


@dataclass
class NodeRound:
    """What a node's clients did this round."""

    updates: dict[int, tuple[dict[str, Tensor], TrainResult]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    hang: bool = False  # a client's injected fault delays the node's reply


def train_node(
    training_round: TrainingRound, state: dict[str, Tensor], clients: list[int], store: ClientStore
) -> NodeRound:
    """Train the node's sampled ``clients`` in ``training_round`` from the global ``state``."""
    config, server_round = training_round.config, training_round.server_round
    node_round = NodeRound()
    faults = {}
    for client in clients:
        faults[client] = draw_fault(config.seed, client, server_round, config.fault_rate, config.fault_kinds)
        if faults[client] == "raise":
            node_round.errors[client] = f"injected fault (fault-rate): client {client} raised in round {server_round}"
    training = [client for client in clients if client not in node_round.errors]
    local = config.stats_aggregation == "local"
    kept = {client: store.get(client, LOCAL_NORMS) if local else None for client in training}
    trained = _train(training_round, state, training, kept, node_round.errors)
    for client, (new_state, result) in trained.items():
        if local:
            store.put(client, LOCAL_NORMS, {key: new_state[key] for key in norm_keys(config)})
        node_round.updates[client] = (poison(new_state) if faults[client] == "nan" else new_state, result)
        node_round.hang |= faults[client] == "hang"
    return node_round


def _train(
    training_round: TrainingRound,
    state: dict[str, Tensor],
    clients: list[int],
    kept: dict[int, dict[str, Tensor] | None],
    errors: dict[int, str],
) -> dict[int, tuple[dict[str, Tensor], TrainResult]]:
    """The clients' trained states: packed when there are several (unless ``pack-clients`` is off or
    the data is streamed), else one by one; a client (or a packed group) whose training fails goes into ``errors``."""
    config = training_round.config
    if config.pack_clients and len(clients) > 1 and not dataset(config).streamed:
        try:
            return train_packed_clients(training_round, state, clients, kept)
        except (FloatingPointError, RuntimeError, ValueError) as error:
            errors |= {client: f"{type(error).__name__}: {error}" for client in clients}
            return {}
    trained = {}
    for client in clients:
        try:
            trained[client] = train_client(training_round, state, client, kept[client])
        except (FloatingPointError, RuntimeError, ValueError) as error:
            errors[client] = f"{type(error).__name__}: {error}"
    return trained


def reply_content(config: RunConfig, reference: dict[str, Tensor], node_round: NodeRound) -> RecordDict:
    """The reply of :mod:`strategies.replies`: every client's update, or, with ``node-aggregation``
    or above :data:`NODE_AGGREGATION_BYTES`, the partial aggregate of the valid ones (malformed
    updates dropped here, with their reasons)."""
    metrics = {client: _metrics(client, result) for client, (_, result) in node_round.updates.items()}
    size = sum(t.numel() * t.element_size() for state, _ in node_round.updates.values() for t in state.values())
    if not (config.node_aggregation or size > NODE_AGGREGATION_BYTES):
        states = {client: ArrayRecord(state) for client, (state, _) in node_round.updates.items()}
        return node_reply(metrics, states, node_round.errors)
    expected = {key: value.cpu().numpy() for key, value in reference.items()}
    errors, valid = dict(node_round.errors), {}
    for client, (state, _) in sorted(node_round.updates.items()):
        arrays = {key: value.detach().cpu().numpy() for key, value in state.items()}
        problem = check_update(arrays, expected)
        if problem:
            errors[client] = problem
        else:
            valid[client] = arrays
    if not valid:
        return node_reply({}, errors=errors)
    weights = [metrics[client]["num-examples"] for client in valid]
    partial = partial_aggregate(list(valid.values()), weights, config.stats_aggregation)
    return node_reply({client: metrics[client] for client in valid}, errors=errors, partial=partial)


def _metrics(client: int, result: TrainResult) -> dict[str, int | float]:
    return {
        "num-examples": result.examples,
        "train-loss": result.loss,
        "batch-size": result.batch_size,
        "steps": result.steps,
        "client-id": client,
    }
