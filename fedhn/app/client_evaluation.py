"""A node's federated evaluation: each of its sampled clients evaluates the global model on its own
local test split (``local-test-fraction`` of its partition, through its feature-shift
transformation), under ``stats-aggregation = local`` with its own norm layers from the node's
:class:`~fedhn.app.client_store.ClientStore` (FedBN's protocol); a client that has not trained yet
has none and uses the global ones."""

from __future__ import annotations

from flwr.app import RecordDict
from torch import Tensor

from fedhn.app.client_store import ClientStore
from fedhn.app.config import RunConfig
from fedhn.app.node import LOCAL_NORMS
from fedhn.app.task import client_data, client_model
from fedhn.training import evaluate
from strategies.replies import node_reply

__all__ = ["evaluate_node"]


def evaluate_node(
    config: RunConfig, state: dict[str, Tensor], clients: list[int], num_clients: int, store: ClientStore
) -> RecordDict:
    """The evaluate reply of :mod:`strategies.replies` for ``clients`` (ids out of ``num_clients``):
    each client's ``accuracy``, ``loss`` and ``num-examples`` (its test examples), or its error."""
    metrics, errors = {}, {}
    model = client_model(config)
    for client in clients:
        data = client_data(config, client, num_clients)
        if len(data.test_labels) == 0:
            errors[client] = (
                f"client {client} has no local test split (fraction-evaluate = {config.fraction_evaluate}, "
                f"{len(data.labels)} examples in its partition)"
            )
            continue
        model.load_state_dict(state)
        own = store.get(client, LOCAL_NORMS) if config.stats_aggregation == "local" else None
        if own:
            model.load_state_dict(own, strict=False)
        loss, accuracy = evaluate(model, data.test_images, data.test_labels, config.eval_batch_size)
        metrics[client] = {
            "num-examples": len(data.test_labels),
            "accuracy": accuracy,
            "loss": loss,
            "client-id": client,
        }
    return node_reply(metrics, errors=errors)
