"""FedAvg on Flower's Message API with statistics-aware aggregation: an adapter around the math of
:mod:`strategies.aggregation`, with the reply format of :mod:`strategies.replies`."""

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

from strategies.aggregation import STATS_AGGREGATIONS, Partial, StatsAggregation, combine_partials, partial_aggregate
from strategies.client_metrics import evaluation_summary, statistic_spread
from strategies.replies import CLIENTS, WEIGHT, check_update, parse_reply

__all__ = ["StatsFedAvg", "RoundReport", "RoundFailedError"]


@dataclass
class RoundReport:
    """What happened to the replies of one training round."""

    server_round: int
    accepted: int = 0  # valid client updates
    dropped: dict[str, str] = field(default_factory=dict)  # 'client <c> (node <n>)' -> reason
    train_loss: float | None = None
    aggregated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # what ``after_aggregation`` reported
    client_train: dict[int, dict[str, float]] = field(default_factory=dict)  # each valid update's train metrics
    stat_spread: dict[str, float] = field(default_factory=dict)  # running statistics' spread across clients
    evaluation: dict[str, Any] | None = None  # the federated evaluation of the round's global model


class RoundFailedError(RuntimeError):
    """Fewer valid replies than the minimum: the run cannot go on."""

    def __init__(self, report: RoundReport, minimum: int) -> None:
        reasons = "; ".join(f"{client}: {reason}" for client, reason in report.dropped.items()) or "no replies"
        super().__init__(
            f"Round {report.server_round} failed: {report.accepted} valid client updates, fewer than the minimum "
            f"of {minimum} (min-train-nodes). Dropped: {reasons}"
        )
        self.report = report


class StatsFedAvg(FedAvg):
    """FedAvg over clients, several of which a node may host, that pools running statistics exactly
    and survives malformed updates.

    Args:
        stats_aggregation: ``pooled`` (exact pooled variance), ``mean`` (arithmetic mean, as other
            frameworks) or ``local`` (FedBN: clients keep their norm layers; the server pools its copy).
        round_config: called with the server round, returns entries added to that round's train and
            evaluate configs: the server owns per-round hyperparameters (e.g. the learning rate of a
            schedule) and where clients keep their state.
        first_round: the number of the first round ``start`` runs (> 1 when a run resumes): round
            numbers sent to clients, logged, used for sampling and passed to ``evaluate_fn`` count from it.
        sampling_seed: sample clients reproducibly, with a generator of its own seeded by (seed, round),
            from the clients in id order.
        clients_of: the clients each connected node hosts (node id -> client ids), e.g. from the
            partition each node holds. Default: node i of the sorted node ids hosts client i.
        error_summary: the gist of a node's error reason (default: its last 300 characters).
        after_aggregation: called with the round and the aggregated arrays; returns the arrays that
            become the global model (e.g. with recalibrated statistics) and entries for the round's
            report (:attr:`RoundReport.extra`).
        **kwargs: FedAvg's arguments. ``fraction_train`` and ``min_train_nodes`` count clients
            (each round samples ``max(fraction_train * clients, min_train_nodes)`` clients and needs
            ``min_train_nodes`` valid client updates); ``min_available_nodes`` counts nodes.

    Each round sends every node one train message naming its sampled clients (config entry
    ``clients``); replies follow :mod:`strategies.replies`. Client updates that carry an error, no
    ``num-examples``, non-finite values, or arrays whose keys, shapes or dtypes differ from the
    global model, and clients whose node did not reply within the timeout, are dropped with a
    logged reason; the node's other clients stay. If fewer than ``min_train_nodes`` client updates
    remain, :class:`RoundFailedError` ends the run with the reasons. ``last_round`` describes the
    latest round; :meth:`start` hands each round's report to its ``evaluate_fn``.

    With ``fraction_evaluate > 0`` each round then samples that fraction of the clients (at least
    ``min_evaluate_nodes``, counting clients; seeded by (seed, round) like training) and sends every
    node one evaluate message naming its sampled clients; each client replies with its ``accuracy``,
    ``loss`` and ``num-examples`` on its local test split, summarized in the round report's
    ``evaluation`` (:func:`strategies.client_metrics.evaluation_summary`, with the failed clients).
    """

    def __init__(
        self,
        stats_aggregation: StatsAggregation = "pooled",
        round_config: Callable[[int], dict[str, float | int | str]] | None = None,
        first_round: int = 1,
        sampling_seed: int = 0,
        clients_of: Callable[[Grid], dict[int, list[int]]] | None = None,
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
        self.clients_of = clients_of or (lambda grid: {node: [i] for i, node in enumerate(sorted(grid.get_node_ids()))})
        self.error_summary = error_summary or (lambda reason: reason.strip()[-300:])
        self.after_aggregation = after_aggregation
        self.last_round = RoundReport(0)
        self._reference: dict[str, np.ndarray] = {}
        self._sent: dict[int, list[int]] = {}  # node -> the clients of this round's train message to it
        self._evaluated: dict[int, list[int]] = {}  # node -> the clients of this round's evaluate message to it
        self._pushed: list[Message] = []  # the messages of the latest configure step (train, evaluate)

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
        config = self._round_config(config, server_round)
        rng = random.Random(f"sampling-{self.sampling_seed}-{server_round}")
        self._sent = self._sample(grid, rng, self.fraction_train, self.min_train_nodes)
        log(
            INFO, "configure_train: sampled %d clients on %d nodes", sum(map(len, self._sent.values())), len(self._sent)
        )
        return self._messages(arrays, config, self._sent, MessageType.TRAIN)

    def _round_config(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        """``config`` with the round's entries (``round_config``) and ``server-round``: what train and
        evaluate messages carry (e.g. where clients keep their state)."""
        extra = self.round_config(server_round) if self.round_config is not None else {}
        return ConfigRecord({**config, **extra, "server-round": server_round})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        config = self._round_config(config, server_round)
        rng = random.Random(f"evaluate-{self.sampling_seed}-{server_round}")
        self._evaluated = self._sample(grid, rng, self.fraction_evaluate, self.min_evaluate_nodes)
        if self._evaluated:
            clients = sum(map(len, self._evaluated.values()))
            log(INFO, "configure_evaluate: sampled %d clients on %d nodes", clients, len(self._evaluated))
        return self._messages(arrays, config, self._evaluated, MessageType.EVALUATE)

    def _messages(
        self, arrays: ArrayRecord, config: ConfigRecord, sent: dict[int, list[int]], message_type: str
    ) -> list[Message]:
        """One message per node, its config naming the node's sampled clients."""
        messages = []
        for node, clients in sent.items():
            record = RecordDict(
                {self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord({**config, CLIENTS: clients})}
            )
            messages += self._construct_messages(record, [node], message_type)
        self._pushed = messages
        return messages

    def _sample(self, grid: Grid, rng: random.Random, fraction: float, minimum: int) -> dict[int, list[int]]:
        """``fraction`` of the clients (at least ``minimum``), once at least ``min_available_nodes``
        nodes are connected: node -> its sampled clients, in id order."""
        if fraction == 0.0:
            return {}
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            connected = len(list(grid.get_node_ids()))
            log(INFO, "Waiting for nodes to connect: %d connected (minimum: %d)", connected, self.min_available_nodes)
            time.sleep(1)
        node_of = {client: node for node, clients in self.clients_of(grid).items() for client in clients}
        clients = sorted(node_of)
        size = max(int(len(clients) * fraction), minimum)
        sampled = clients if size >= len(clients) else sorted(rng.sample(clients, size))
        sent: dict[int, list[int]] = {}
        for client in sampled:
            sent.setdefault(node_of[client], []).append(client)
        return sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        report = RoundReport(server_round)
        updates, partials = self._collect(replies, report)
        for client, reason in report.dropped.items():
            log(WARNING, "Round %d: dropped %s: %s", server_round, client, reason)
        report.accepted = len(updates)
        report.client_train = {client: dict(metrics) for client, (_, metrics) in updates.items()}
        self.last_round = report
        if report.accepted < max(self.min_train_nodes, 1):
            raise RoundFailedError(report, max(self.min_train_nodes, 1))
        # A fixed order (client ids) makes the floating-point sums independent of reply arrival.
        states = [state for _, (state, _) in sorted(updates.items()) if state is not None]
        weights = [float(m[WEIGHT]) for _, (state, m) in sorted(updates.items()) if state is not None]
        if states:
            partials.insert(0, partial_aggregate(states, weights, self.stats_aggregation))
        report.stat_spread = statistic_spread(states)
        combined = combine_partials(partials, self.stats_aggregation)
        total = sum(float(metrics[WEIGHT]) for _, metrics in updates.values())
        report.train_loss = sum(float(m[WEIGHT]) * float(m.get("train-loss", math.nan)) for _, m in updates.values())
        report.train_loss /= total
        report.aggregated = True
        log(
            INFO,
            "Round %d: aggregated %d clients (%s statistics)",
            server_round,
            report.accepted,
            self.stats_aggregation,
        )
        metrics = MetricRecord({"train-loss": report.train_loss, "clients": report.accepted, WEIGHT: total})
        arrays = ArrayRecord(
            {
                key: Array(np.asarray(value, dtype=self._reference[key].dtype, order="C"))
                for key, value in combined.items()
            }
        )
        if self.after_aggregation is not None:
            arrays, report.extra = self.after_aggregation(server_round, arrays)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Summarize the clients' evaluations into ``last_round.evaluation``; clients without a valid
        result are dropped with their reasons (the summary's ``failures``)."""
        if not self._evaluated:
            return None
        dropped: dict[str, str] = {}
        accuracies, losses, examples = {}, {}, {}
        for node, clients, content in self._node_replies(replies, self._evaluated, dropped):
            reply = parse_reply(content, clients, updates=False)
            dropped |= {_label(client, node): reason for client, reason in reply.errors.items()}
            for client, metrics in reply.metrics.items():
                values = (metrics.get("accuracy"), metrics.get("loss"))
                if all(isinstance(v, float | int) and math.isfinite(v) for v in values):
                    accuracies[client], losses[client] = float(values[0]), float(values[1])
                    examples[client] = int(metrics[WEIGHT])
                else:
                    dropped[_label(client, node)] = f"invalid accuracy or loss: {values}"
        summary = evaluation_summary(accuracies, losses, examples) if accuracies else {"clients": 0}
        self.last_round.evaluation = summary | {"failed": len(dropped), "failures": dropped}
        for client, reason in dropped.items():
            log(WARNING, "Round %d evaluation: dropped %s: %s", server_round + self.round_offset, client, reason)
        if not accuracies:
            return None
        return MetricRecord(
            {key: summary[key] for key in ("accuracy", "loss", "mean_accuracy", "worst_10pct_accuracy")}
        )

    def _node_replies(
        self, replies: Iterable[Message], sent: dict[int, list[int]], dropped: dict[str, str]
    ) -> Iterable[tuple[int, list[int], RecordDict]]:
        """(node, the clients it was sent, reply content) of every node that replied without an
        error; the clients of a node that failed or did not reply go into ``dropped`` with the reason."""
        replied = set()
        # The grid gives each message its id when it pushes it. A reply the SuperLink made itself (e.g.
        # "Node Unavailable" for a node that stopped sending heartbeats) comes from the SuperLink's node
        # id: it is the node's by the message it replies to.
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in self._pushed if m.metadata.message_id}
        for message in replies:
            node = node_of.get(message.metadata.reply_to_message_id, message.metadata.src_node_id)
            replied.add(node)
            if message.has_error():
                reason = f"error: {self.error_summary(message.error.reason)}"
                dropped |= {_label(client, node): reason for client in sent.get(node, [])}
            else:
                yield node, sent.get(node, []), message.content
        for node, clients in sent.items():
            if node not in replied:
                dropped |= {_label(client, node): "no reply within the round timeout" for client in clients}

    def _collect(
        self, replies: Iterable[Message], report: RoundReport
    ) -> tuple[dict[int, tuple[dict[str, np.ndarray] | None, MetricRecord]], list[Partial]]:
        """The valid client updates (client -> (state, or None inside a partial; metrics)) and the
        nodes' partials, in node order of their first client; the dropped clients go into ``report``."""
        updates: dict[int, tuple[dict[str, np.ndarray] | None, MetricRecord]] = {}
        partials: list[tuple[int, Partial]] = []
        for node, clients, content in self._node_replies(replies, self._sent, report.dropped):
            reply = parse_reply(content, clients)
            for client, reason in reply.errors.items():
                report.dropped[_label(client, node)] = reason
            for client, metrics in reply.metrics.items():
                state = reply.states.get(client)
                problem = None if state is None else check_update(state, self._reference)
                if problem:
                    report.dropped[_label(client, node)] = problem
                else:
                    updates[client] = (state, metrics)
            if reply.partial is not None:
                partials.append((min(clients), reply.partial))
        return updates, [partial for _, partial in sorted(partials, key=lambda item: item[0])]


def _label(client: int, node: int) -> str:
    return f"client {client} (node {node})"
