"""The train replies of nodes that host several clients, on Flower's records.

A train (or evaluate) message to a node carries the global ``arrays`` and a ``config`` whose ``clients`` entry
lists the sampled clients the node hosts. Its reply holds, for every one of those clients ``c``:

- ``metrics.<c>``: a MetricRecord with at least ``num-examples`` (and ``train-loss``, ...);
- ``arrays.<c>``: the client's trained state, unless the node aggregates its clients;
- or an entry ``<c>`` in the ConfigRecord ``errors``: why the client has no update (it failed on the
  node, or the node dropped its malformed update before aggregating).

A node that aggregates sends one ``partial`` ArrayRecord instead of the ``arrays.<c>``: the
:class:`~strategies.aggregation.Partial` of its valid clients (``sum:<key>``, ``center:<key>``,
``square:<key>``), with the MetricRecord ``partial`` (``weight``, ``clients``).

An evaluate reply has the same ``metrics.<c>`` (``num-examples``: the client's test examples,
``accuracy``, ``loss``) and ``errors``, and no arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from strategies.aggregation import Partial

__all__ = ["CLIENTS", "NodeReply", "check_update", "node_reply", "parse_reply"]

CLIENTS = "clients"  # the train config entry that lists the node's sampled clients
WEIGHT = "num-examples"
_PARTIAL = "partial"
_PARTS = (("sum", "sums"), ("center", "centers"), ("square", "center_squares"))


@dataclass
class NodeReply:
    """A node's reply, parsed: each client's state (None when it comes as part of ``partial``) and
    metrics, the clients without an update and why, and the node's partial aggregate if it sent one."""

    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    metrics: dict[int, MetricRecord] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    partial: Partial | None = None


def check_update(state: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> str | None:
    """Why a client's ``state`` cannot be aggregated with the global ``reference`` (other keys,
    shapes or dtypes, non-finite values), or None."""
    if state.keys() != reference.keys():
        return f"array keys differ from the global model's: {sorted(set(state) ^ set(reference))[:5]}"
    for key, value in state.items():
        expected = reference[key]
        if value.shape != expected.shape or value.dtype != expected.dtype:
            return f"{key!r} is {value.dtype}{list(value.shape)}, the global model's is {expected.dtype}{list(expected.shape)}"
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return f"{key!r} has non-finite values"
    return None


def node_reply(
    metrics: Mapping[int, Mapping[str, Any]],
    states: Mapping[int, ArrayRecord] | None = None,
    errors: Mapping[int, str] | None = None,
    partial: Partial | None = None,
) -> RecordDict:
    """The reply content: every client's ``metrics`` and either its state (``states``) or its share of ``partial``."""
    records: dict[str, Any] = {f"metrics.{client}": MetricRecord(dict(values)) for client, values in metrics.items()}
    records |= {f"arrays.{client}": record for client, record in (states or {}).items()}
    if errors:
        records["errors"] = ConfigRecord({str(client): reason for client, reason in errors.items()})
    if partial is not None:
        arrays = {
            f"{prefix}:{key}": Array(np.asarray(value, order="C"))
            for prefix, attribute in _PARTS
            for key, value in getattr(partial, attribute).items()
        }
        records[_PARTIAL] = ArrayRecord(arrays)
        records[f"{_PARTIAL}-size"] = MetricRecord({"weight": partial.weight, "clients": partial.clients})
    return RecordDict(records)


def parse_reply(content: RecordDict, clients: list[int], updates: bool = True) -> NodeReply:
    """The reply of a node that was sent ``clients``; a client the reply says nothing about, or
    whose update is incomplete, is an error. ``updates=False``: an evaluate reply, which carries
    each client's ``metrics.<c>`` only (``num-examples`` counts its test examples)."""
    reply = NodeReply()
    errors = content.config_records.get("errors", ConfigRecord())
    if _PARTIAL in content.array_records:
        reply.partial = _partial(content)
    for client in clients:
        metrics = content.metric_records.get(f"metrics.{client}")
        arrays = content.array_records.get(f"arrays.{client}")
        if str(client) in errors:
            reply.errors[client] = str(errors[str(client)])
        elif metrics is None or (updates and arrays is None and reply.partial is None):
            reply.errors[client] = "the node's reply has no update for it"
        elif not _valid_weight(metrics.get(WEIGHT)):
            reply.errors[client] = f"missing or invalid {WEIGHT!r}: {metrics.get(WEIGHT)!r}"
        else:
            reply.metrics[client] = metrics
            if arrays is not None:
                reply.states[client] = {key: value.numpy() for key, value in arrays.items()}
    return reply


def _valid_weight(weight: Any) -> bool:
    return isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight) and weight > 0


def _partial(content: RecordDict) -> Partial:
    arrays = {key: value.numpy() for key, value in content.array_records[_PARTIAL].items()}
    size = content.metric_records[f"{_PARTIAL}-size"]
    parts = {attribute: {} for _, attribute in _PARTS}
    for name, value in arrays.items():
        prefix, _, key = name.partition(":")
        parts[dict(_PARTS)[prefix]][key] = value
    return Partial(float(size["weight"]), int(size["clients"]), **parts)
