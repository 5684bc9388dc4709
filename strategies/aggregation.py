"""Federated averaging of model states with exact pooling of normalization statistics.

Framework-free: states are dicts of NumPy arrays (a PyTorch ``state_dict`` as NumPy), so any tool
can reuse the math. Keys follow PyTorch's naming; the buffer convention of :mod:`fedhn.norms` says
how each ``running_var`` is centered.

Rules, with weights w_k normalized to sum to 1 (usually the clients' example counts):

- ``*.running_mean``, ``*.running_var_center`` and every other floating-point array: sum_k w_k a_k.
- ``*.running_var`` with ``stats="pooled"``: the variance of the union of the clients' data,
  sum_k w_k (var_k + (c_k - c)^2), c_k the center of client k's variance and c = sum_k w_k c_k.
  The center is ``running_var_center`` when the layer has one, else the average of the
  ``running_mean`` entries of the variance's channel group (for BN the channel's own mean; for HN's
  one group, the mean of all channel means). With ``stats="mean"`` (what other frameworks do) and
  ``stats="local"`` the server keeps sum_k w_k var_k and pooled respectively: under ``local`` the
  clients keep their own statistics, the server's copy only serves its centralized evaluation.
- Integer arrays (``num_batches_tracked``): the elementwise maximum, dtype kept. A client's counter
  is the global counter it received plus its own steps, so the maximum is the longest history.

Floating-point arrays keep their dtype; the arithmetic runs in float64.

The rules are computed from additive sufficient statistics (:class:`Partial`: the total weight,
sum_k w_k a_k of every array, and sum_k w_k c_k, sum_k w_k c_k^2 of every variance's centers, with
unnormalized weights; the pooled variance is then (sum_k w_k var_k + sum_k w_k c_k^2) / W - c^2).
Partials of disjoint sets of clients add up exactly, so a node hosting many clients can send one
partial instead of every client's state (:func:`partial_aggregate`, :func:`combine_partials`), and
:func:`aggregate_states` is the same computation over one partial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "STATS_AGGREGATIONS",
    "Partial",
    "StatsAggregation",
    "aggregate_states",
    "combine_partials",
    "partial_aggregate",
]

StatsAggregation = Literal["pooled", "mean", "local"]
STATS_AGGREGATIONS: tuple[str, ...] = ("pooled", "mean", "local")


@dataclass(frozen=True)
class Partial:
    """Additive sufficient statistics of weighted client states (see the module docstring).

    Attributes:
        weight: W = sum_k w_k.
        clients: how many states it sums.
        sums: key -> sum_k w_k a_k (float64) for floating-point arrays, the elementwise maximum for
            integer arrays (dtype kept).
        centers: ``running_var`` key -> sum_k w_k c_k (float64); only with ``stats`` other than ``mean``.
        center_squares: ``running_var`` key -> sum_k w_k c_k^2 (float64), likewise.
    """

    weight: float
    clients: int
    sums: dict[str, np.ndarray]
    centers: dict[str, np.ndarray]
    center_squares: dict[str, np.ndarray]

    def __add__(self, other: Partial) -> Partial:
        if self.sums.keys() != other.sums.keys():
            raise ValueError(f"partials of different models: keys {sorted(set(self.sums) ^ set(other.sums))[:5]}")
        sums = {
            key: np.maximum(value, other.sums[key]) if not _floating(value) else value + other.sums[key]
            for key, value in self.sums.items()
        }
        centers = {key: value + other.centers[key] for key, value in self.centers.items()}
        squares = {key: value + other.center_squares[key] for key, value in self.center_squares.items()}
        return Partial(self.weight + other.weight, self.clients + other.clients, sums, centers, squares)


def aggregate_states(
    states: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    stats: StatsAggregation = "pooled",
) -> dict[str, np.ndarray]:
    """Weighted average of client states with running statistics aggregated by ``stats``.

    Raises:
        ValueError: no states, weights that do not match or are not positive, states whose keys or
            shapes differ, an unknown ``stats``, or a ``running_var`` whose center cannot be found.
    """
    combined = combine_partials([partial_aggregate(states, weights, stats)], stats)
    return {key: value.astype(np.asarray(states[0][key]).dtype, copy=False) for key, value in combined.items()}


def partial_aggregate(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], stats: StatsAggregation = "pooled"
) -> Partial:
    """The :class:`Partial` of ``states`` with (unnormalized) ``weights``.

    Raises:
        ValueError: as :func:`aggregate_states`.
    """
    w = _checked_weights(states, weights, stats)
    sums, centers, squares = {}, {}, {}
    for key in states[0]:
        stacked = np.stack([np.asarray(state[key]) for state in states])
        if not _floating(stacked):
            sums[key] = np.asarray(stacked.max(axis=0))
            continue
        sums[key] = np.tensordot(w, stacked.astype(np.float64), axes=1)
        if key.endswith("running_var") and stats != "mean":
            c = np.stack([_variance_centers(state, key) for state in states])
            centers[key], squares[key] = np.tensordot(w, c, axes=1), np.tensordot(w, c**2, axes=1)
    return Partial(float(w.sum()), len(states), sums, centers, squares)


def combine_partials(partials: Sequence[Partial], stats: StatsAggregation = "pooled") -> dict[str, np.ndarray]:
    """The aggregated state (float64 arrays, integer arrays as they are) of the clients of ``partials``."""
    if not partials:
        raise ValueError("need at least one partial aggregate")
    total = partials[0]
    for partial in partials[1:]:
        total = total + partial
    result = {}
    for key, value in total.sums.items():
        if not _floating(value):
            result[key] = value
        elif key in total.centers and stats != "mean":
            center = total.centers[key] / total.weight
            result[key] = (value + total.center_squares[key]) / total.weight - center**2
        else:
            result[key] = value / total.weight
    return result


def _floating(array: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def _checked_weights(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], stats: str) -> np.ndarray:
    """The weights as float64, once ``stats``, the weights and the states' keys and shapes are valid."""
    if stats not in STATS_AGGREGATIONS:
        raise ValueError(f"stats must be one of {', '.join(STATS_AGGREGATIONS)}, got {stats!r}")
    if not states or len(states) != len(weights):
        raise ValueError(
            f"need one weight per state and at least one state, got {len(states)} states and {len(weights)} weights"
        )
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be positive and finite, got {list(weights)}")
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"state {index} has keys {sorted(set(state) ^ set(keys))} that state 0 does not share")
        for key in keys:
            if np.shape(state[key]) != np.shape(states[0][key]):
                raise ValueError(
                    f"{key!r} has shape {np.shape(state[key])} in state {index}, {np.shape(states[0][key])} in state 0"
                )
    return w


def _variance_centers(state: Mapping[str, np.ndarray], var_key: str) -> np.ndarray:
    """The mean each entry of ``state[var_key]`` is a variance around (buffer convention of fedhn.norms)."""
    prefix = var_key[: -len("running_var")]
    variance = np.asarray(state[var_key])
    if prefix + "running_var_center" in state:
        return np.asarray(state[prefix + "running_var_center"], dtype=np.float64)
    if prefix + "running_mean" in state:
        means = np.asarray(state[prefix + "running_mean"], dtype=np.float64)
        if means.ndim == variance.ndim == 1 and means.size % variance.size == 0:
            return means.reshape(variance.size, -1).mean(axis=1)
    raise ValueError(
        f"cannot pool {var_key!r}: the state has neither {prefix}running_var_center nor a {prefix}running_mean "
        f"whose length is a multiple of the variance's ({variance.size}); use stats='mean' for such states"
    )
