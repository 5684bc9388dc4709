"""FedAvg on Flower's Message API with statistics-aware aggregation: an adapter around
:func:`strategies.aggregation.aggregate_states`."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from strategies.aggregation import STATS_AGGREGATIONS, StatsAggregation, aggregate_states

__all__ = ["StatsFedAvg", "RoundReport", "RoundFailedError"]


@dataclass
class RoundReport:
    """What happened to the replies of one training round."""

    server_round: int
    accepted: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # client (node id or partition) -> reason
    train_loss: float | None = None
    aggregated: bool = False


class RoundFailedError(RuntimeError):
    """Fewer valid replies than the minimum: the run cannot go on."""

    def __init__(self, report: RoundReport, minimum: int) -> None:
        reasons = "; ".join(f"{client}: {reason}" for client, reason in report.dropped.items()) or "no replies"
        super().__init__(
            f"Round {report.server_round} failed: {report.accepted} valid replies, fewer than the minimum of "
            f"{minimum} (min-train-nodes). Dropped replies: {reasons}"
        )
        self.report = report


class StatsFedAvg(FedAvg):
    """FedAvg that pools running statistics exactly and survives malformed replies.

    Args:
        stats_aggregation: ``pooled`` (exact pooled variance), ``mean`` (arithmetic mean, as other
            frameworks) or ``local`` (FedBN: clients keep their norm layers; the server pools its copy).
        round_config: called with the server round, returns entries added to that round's train
            config (e.g. a learning-rate schedule).
        first_round: the number of the first round ``start`` runs (> 1 when a run resumes): round
            numbers sent to clients, logged and used for sampling count from it.
        sampling_seed: with ``fraction_train < 1``, sample clients reproducibly: nodes are ordered
            by the ``partition-id`` they report to a ``query.partition`` message (node ids are random
            per run) and sampled with a generator seeded by (seed, round).
        after_aggregation: called with the round and the aggregated arrays; returns the arrays that
            become the global model (e.g. with recalibrated statistics).
        **kwargs: FedAvg's arguments (fraction_train, min_train_nodes, ...).

    Replies that carry an error, no ``num-examples``, non-finite values, or arrays whose keys,
    shapes or dtypes differ from the global model, and sampled clients that did not reply within the
    timeout, are dropped with a logged reason. If fewer than
    ``min_train_nodes`` replies remain, :class:`RoundFailedError` ends the run with the reasons.
    ``last_round`` describes the latest round.
    """

    def __init__(
        self,
        stats_aggregation: StatsAggregation = "pooled",
        round_config: Callable[[int], dict[str, float | int | str]] | None = None,
        first_round: int = 1,
        sampling_seed: int | None = None,
        after_aggregation: Callable[[int, ArrayRecord], ArrayRecord] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if stats_aggregation not in STATS_AGGREGATIONS:
            raise ValueError(
                f"stats_aggregation must be one of {', '.join(STATS_AGGREGATIONS)}, got {stats_aggregation!r}"
            )
        self.stats_aggregation = stats_aggregation
        self.round_config = round_config
        self.round_offset = first_round - 1
        self.sampling_seed = sampling_seed
        self.after_aggregation = after_aggregation
        self.last_round = RoundReport(0)
        self.partition_of: dict[int, int] = {}  # node id -> partition id, as clients report it
        self._reference: dict[str, np.ndarray] = {}
        self._sampled: list[int] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._reference = {key: value.numpy() for key, value in arrays.items()}
        if self.round_config is not None:
            config = ConfigRecord({**config, **self.round_config(server_round)})
        if self.sampling_seed is not None and self.fraction_train < 1.0:
            self._learn_partitions(grid)
            random.seed(f"sampling-{self.sampling_seed}-{server_round}")  # FedAvg samples with random
            grid = _OrderedGrid(grid, self.partition_of)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled = [message.metadata.dst_node_id for message in messages]
        return messages

    def _learn_partitions(self, grid: Grid) -> None:
        """Ask nodes not seen before for their partition id (a QUERY message)."""
        unknown = [node for node in grid.get_node_ids() if node not in self.partition_of]
        if not unknown:
            return
        query = RecordDict({"config": ConfigRecord({"query": "partition-id"})})
        messages = [
            Message(content=query, dst_node_id=node, message_type=f"{MessageType.QUERY}.partition") for node in unknown
        ]
        for reply in grid.send_and_receive(messages, timeout=60):
            if not reply.has_error() and reply.content.metric_records:
                metrics = next(iter(reply.content.metric_records.values()))
                self.partition_of[reply.metadata.src_node_id] = int(metrics["partition-id"])

    def _client(self, node: int) -> str:
        partition = self.partition_of.get(node)
        return f"node {node}" if partition is None else f"client {partition} (node {node})"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        report = RoundReport(server_round)
        accepted: list[tuple[dict[str, np.ndarray], MetricRecord]] = []
        replied = set()
        for message in replies:
            replied.add(message.metadata.src_node_id)
            client = self._client(message.metadata.src_node_id)
            if message.has_error():
                report.dropped[client] = f"error: {_error_summary(message.error.reason)}"
                continue
            state, metrics, problem = self._unpack(message)
            if problem:
                report.dropped[client] = problem
                continue
            accepted.append((state, metrics))
            if "partition-id" in metrics:
                self.partition_of[message.metadata.src_node_id] = int(metrics["partition-id"])
        for node in self._sampled:
            if node not in replied:
                report.dropped[self._client(node)] = "no reply within the round timeout"
        for client, reason in report.dropped.items():
            log(WARNING, "Round %d: dropped the reply of %s: %s", server_round, client, reason)
        report.accepted = len(accepted)
        self.last_round = report
        if len(accepted) < max(self.min_train_nodes, 1):
            raise RoundFailedError(report, max(self.min_train_nodes, 1))
        # A fixed order makes the floating-point sums independent of reply arrival.
        accepted.sort(key=lambda item: int(item[1].get("partition-id", 0)))
        weights = [float(metrics[self.weighted_by_key]) for _, metrics in accepted]
        aggregated = aggregate_states([state for state, _ in accepted], weights, self.stats_aggregation)
        total = sum(weights)
        report.train_loss = (
            sum(w * float(m.get("train-loss", math.nan)) for w, (_, m) in zip(weights, accepted, strict=True)) / total
        )
        report.aggregated = True
        log(
            INFO, "Round %d: aggregated %d replies (%s statistics)", server_round, len(accepted), self.stats_aggregation
        )
        metrics = MetricRecord({"train-loss": report.train_loss, "clients": len(accepted), self.weighted_by_key: total})
        arrays = ArrayRecord({key: Array(np.asarray(value, order="C")) for key, value in aggregated.items()})
        if self.after_aggregation is not None:
            arrays = self.after_aggregation(server_round, arrays)
        return arrays, metrics

    def _unpack(self, message: Message) -> tuple[dict[str, np.ndarray], MetricRecord, str | None]:
        """The reply's state and metrics, or the reason it cannot be aggregated."""
        content = message.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return {}, MetricRecord(), "expected one ArrayRecord and one MetricRecord"
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            return {}, metrics, f"missing or invalid {self.weighted_by_key!r}: {weight!r}"
        state = {key: value.numpy() for key, value in next(iter(content.array_records.values())).items()}
        if state.keys() != self._reference.keys():
            diff = sorted(set(state) ^ set(self._reference))[:5]
            return {}, metrics, f"array keys differ from the global model's: {diff}"
        for key, value in state.items():
            expected = self._reference[key]
            if value.shape != expected.shape or value.dtype != expected.dtype:
                return (
                    {},
                    metrics,
                    (
                        f"{key!r} is {value.dtype}{list(value.shape)}, the global model's is {expected.dtype}{list(expected.shape)}"
                    ),
                )
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                return {}, metrics, f"{key!r} has non-finite values"
        return state, metrics, None


class _OrderedGrid:
    """A Grid whose node ids come in partition order (then node id), so that seeded sampling picks
    the same partitions in every run."""

    def __init__(self, grid: Grid, partition_of: dict[int, int]) -> None:
        self._grid, self._partition_of = grid, partition_of

    def get_node_ids(self) -> list[int]:
        unknown = 1 << 62
        return sorted(self._grid.get_node_ids(), key=lambda node: (self._partition_of.get(node, unknown), node))

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def _error_summary(reason: str, limit: int = 300) -> str:
    """The gist of a client error: Flower wraps the exception message in a Ray traceback."""
    lines = reason.strip().splitlines() or [""]
    text = reason.rsplit("Message: ", 1)[-1] if "Message: " in reason else lines[-1]
    text = text.strip().rstrip("'>").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
