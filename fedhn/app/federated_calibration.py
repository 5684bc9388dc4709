"""The federated calibration protocol (run-config key ``calibrate-stats``), over the math of
:mod:`fedhn.calibration`.

After an aggregation that is due (the last round, and every ``calibrate-every`` rounds; with
``freeze-stats-after = T`` (FixBN) once, after round T, the statistics the clients then freeze), the server
calibrates the global model layer by layer in forward order: for each layer, one message round
(``query.calibrate``) in which every node returns the sums of that layer's input over its partition
under the current global model (:func:`node_sums`); the server pools them, sets the layer, and
sends the updated model for the next layer.
"""

from __future__ import annotations

from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from torch import Tensor, nn

from fedhn.app.config import RunConfig
from fedhn.app.task import client_data, client_model, test_data
from fedhn.calibration import apply_sums, calibration_order, layer_sums, pool_sums
from fedhn.data import read_batches
from fedhn.training import evaluate

__all__ = ["FederatedCalibration", "node_sums", "QUERY"]

QUERY = f"{MessageType.QUERY}.calibrate"


class FederatedCalibration:
    """The strategy's ``after_aggregation`` hook: calibrates the aggregated model when due and
    reports ``calibration`` (clients, layers, test accuracy before) for the round's record."""

    def __init__(self, grid: Grid, config: RunConfig, model: nn.Module) -> None:
        self.grid, self.config, self.model = grid, config, model

    def due(self, server_round: int) -> bool:
        every, frozen_after = self.config.calibrate_every, self.config.freeze_stats_after
        if self.config.calibrate_stats and frozen_after:
            return server_round == min(frozen_after, self.config.num_server_rounds)
        return self.config.calibrate_stats and (
            server_round == self.config.num_server_rounds or bool(every and server_round % every == 0)
        )

    def __call__(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict]:
        if not self.due(server_round):
            return arrays, {}
        images, labels = test_data(self.config)
        order = calibration_order(self.model, next(read_batches(images, [slice(0, 1)])))
        if not order:
            return arrays, {}
        self.model.load_state_dict(arrays.to_torch_state_dict())
        before = evaluate(self.model, images, labels, self.config.eval_batch_size)[1]
        replies = []
        for layer in order:  # in forward order: each layer's input is made with the layers before it calibrated
            parts = self._request(layer)
            if not parts:
                log(WARNING, "Calibration of round %d abandoned at layer %s: no client replied", server_round, layer)
                return arrays, {}
            apply_sums(self.model, pool_sums(parts))
            replies.append(len(parts))
        report = {"test_accuracy_before": before, "clients": min(replies), "layers": len(order)}
        return ArrayRecord(self.model.state_dict()), {"calibration": report}

    def _request(self, layer: str) -> list[dict[str, Tensor]]:
        """Every node's sums of ``layer``'s input under the current model."""
        content = RecordDict({"arrays": ArrayRecord(self.model.state_dict()), "config": ConfigRecord({"layer": layer})})
        messages = [Message(content=content, dst_node_id=node, message_type=QUERY) for node in self.grid.get_node_ids()]
        sums = []
        for reply in self.grid.send_and_receive(messages, timeout=self.config.round_timeout):
            if reply.has_error():
                log(WARNING, "Calibration: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason[-300:])
            else:
                sums.append(reply.content["sums"].to_torch_state_dict())
        return sums


def node_sums(
    config: RunConfig, state: dict[str, Tensor], clients: list[int], num_clients: int, layer: str
) -> tuple[dict[str, Tensor], int]:
    """A node's reply: the sums of :func:`fedhn.calibration.layer_sums` of ``layer``'s input under
    the global ``state`` over the whole partitions of its ``clients`` (sums add up), and their
    number of examples."""
    model = client_model(config)
    model.load_state_dict(state)
    parts, examples = [], 0
    for client in clients:
        data = client_data(config, client, num_clients)
        parts.append(layer_sums(model, data.images, layer, config.eval_batch_size))
        examples += len(data.labels)
    return pool_sums(parts), examples
