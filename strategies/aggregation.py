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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = ["aggregate_states", "StatsAggregation", "STATS_AGGREGATIONS"]

StatsAggregation = Literal["pooled", "mean", "local"]
STATS_AGGREGATIONS: tuple[str, ...] = ("pooled", "mean", "local")


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
    if stats not in STATS_AGGREGATIONS:
        raise ValueError(f"stats must be one of {', '.join(STATS_AGGREGATIONS)}, got {stats!r}")
    if not states or len(states) != len(weights):
        raise ValueError(
            f"need one weight per state and at least one state, got {len(states)} states and {len(weights)} weights"
        )
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be positive and finite, got {list(weights)}")
    w = w / w.sum()
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"state {index} has keys {sorted(set(state) ^ set(keys))} that state 0 does not share")
        for key in keys:
            if np.shape(state[key]) != np.shape(states[0][key]):
                raise ValueError(
                    f"{key!r} has shape {np.shape(state[key])} in state {index}, {np.shape(states[0][key])} in state 0"
                )

    result = {}
    for key in keys:
        stacked = np.stack([np.asarray(state[key]) for state in states])
        if not np.issubdtype(stacked.dtype, np.floating):
            result[key] = np.asarray(stacked.max(axis=0))
        elif key.endswith("running_var") and stats != "mean":
            centers = np.stack([_variance_centers(state, key) for state in states])
            result[key] = np.asarray(_pooled_variance(stacked, centers, w), dtype=stacked.dtype)
        else:
            result[key] = np.asarray(np.tensordot(w, stacked.astype(np.float64), axes=1), dtype=stacked.dtype)
    return result


def _pooled_variance(variances: np.ndarray, centers: np.ndarray, w: np.ndarray) -> np.ndarray:
    variances, centers = variances.astype(np.float64), centers.astype(np.float64)
    center = np.tensordot(w, centers, axes=1)
    return np.tensordot(w, variances + (centers - center) ** 2, axes=1)


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
