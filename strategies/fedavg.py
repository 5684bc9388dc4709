"""FedAvg on Flower's Message API with statistics-aware aggregation: an adapter around
:func:`strategies.aggregation.aggregate_states`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
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
    extra: dict[str, Any] = field(default_factory=dict)  # what ``after_aggregation`` reported


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
            config: the server owns per-round hyperparameters (e.g. the learning rate of a schedule).
        first_round: the number of the first round ``start`` runs (> 1 when a run resumes): round
            numbers sent to clients, logged, used for sampling and passed to ``evaluate_fn`` count from it.
        sampling_seed: sample clients reproducibly, with a generator of its own seeded by (seed, round),
            from the nodes in the order ``node_order`` gives.
        node_order: all connected node ids in a reproducible order (node ids are random per run; e.g.
            ordered by the partition each node holds). Default: ``grid.get_node_ids()`` sorted.
        node_label: how a node is named in the reasons of dropped replies (default ``node <id>``).
        error_summary: the gist of a client's error reason (default: its last 300 characters).
        after_aggregation: called with the round and the aggregated arrays; returns the arrays that
            become the global model (e.g. with recalibrated statistics) and entries for the round's
            report (:attr:`RoundReport.extra`).
        **kwargs: FedAvg's arguments (fraction_train, min_train_nodes, ...).

    Replies that carry an error, no ``num-examples``, non-finite values, or arrays whose keys,
    shapes or dtypes differ from the global model, and sampled clients that did not reply within the
    timeout, are dropped with a logged reason. If fewer than
    ``min_train_nodes`` replies remain, :class:`RoundFailedError` ends the run with the reasons.
    ``last_round`` describes the latest round; :meth:`start` hands each round's report to its
    ``evaluate_fn``.
    """

    def __init__(
        self,
        stats_aggregation: StatsAggregation = "pooled",
        round_config: Callable[[int], dict[str, float | int | str]] | None = None,
        first_round: int = 1,
        sampling_seed: int = 0,
        node_order: Callable[[Grid], list[int]] | None = None,
        node_label: Callable[[int], str] | None = None,
        error_summary: Callable[[str], str] | None = None,
        after_aggregation: Callable[[int, ArrayRecord], tuple[ArrayRecord, dict[str, Any]]] | None = None,
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
        self.node_order = node_order or (lambda grid: sorted(grid.get_node_ids()))
        self.node_label = node_label or (lambda node: f"node {node}")
        self.error_summary = error_summary or (lambda reason: reason.strip()[-300:])
        self.after_aggregation = after_aggregation
        self.last_round = RoundReport(0)
        self._reference: dict[str, np.ndarray] = {}
        self._sampled: list[int] = []

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord, RoundReport | None], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop; ``evaluate_fn(server_round, arrays, report)`` gets the round's report
        (``None`` before the first round) and the round number counted from ``first_round``."""

        def evaluate(step: int, arrays: ArrayRecord) -> MetricRecord | None:
            if step == 0:
                return evaluate_fn(self.round_offset, arrays, None)
            return evaluate_fn(step + self.round_offset, arrays, self.last_round)

        return super().start(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate if evaluate_fn else None
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._reference = {key: value.numpy() for key, value in arrays.items()}
        if self.round_config is not None:
            config = ConfigRecord({**config, **self.round_config(server_round)})
        config["server-round"] = server_round
        nodes = self._sample(grid, random.Random(f"sampling-{self.sampling_seed}-{server_round}"))
        log(INFO, "configure_train: sampled %d nodes", len(nodes))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        messages = list(self._construct_messages(record, nodes, MessageType.TRAIN))
        self._sampled = nodes
        return messages

    def _sample(self, grid: Grid, rng: random.Random) -> list[int]:
        """``fraction_train`` of the connected nodes (at least ``min_train_nodes``), once at least
        ``min_available_nodes`` are connected."""
        if self.fraction_train == 0.0:
            return []
        wait = max(self.min_available_nodes, self.min_train_nodes)
        while len(list(grid.get_node_ids())) < wait:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum: %d)", len(list(grid.get_node_ids())), wait)
            time.sleep(1)
        nodes = self.node_order(grid)
        size = max(int(len(nodes) * self.fraction_train), self.min_train_nodes)
        return nodes if size >= len(nodes) else rng.sample(nodes, size)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        report = RoundReport(server_round)
        accepted: list[tuple[dict[str, np.ndarray], MetricRecord]] = []
        replied = set()
        for message in replies:
            replied.add(message.metadata.src_node_id)
            client = self.node_label(message.metadata.src_node_id)
            if message.has_error():
                report.dropped[client] = f"error: {self.error_summary(message.error.reason)}"
                continue
            state, metrics, problem = self._unpack(message)
            if problem:
                report.dropped[client] = problem
                continue
            accepted.append((state, metrics))
        for node in self._sampled:
            if node not in replied:
                report.dropped[self.node_label(node)] = "no reply within the round timeout"
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
            arrays, report.extra = self.after_aggregation(server_round, arrays)
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
