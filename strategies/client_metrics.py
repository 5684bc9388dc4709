"""What the server makes of per-client numbers (framework-free): the summary of a federated
evaluation round, and how far the clients' running statistics spread apart."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["STAT_SUFFIXES", "evaluation_summary", "statistic_spread", "worst_fraction_mean"]

STAT_SUFFIXES = (".running_mean", ".running_var")  # the running statistics whose spread is measured


def worst_fraction_mean(values: Sequence[float], fraction: float = 0.1) -> float:
    """The mean of the lowest ``ceil(fraction * len(values))`` values (at least one): e.g. the
    accuracy of the worst 10% of the clients."""
    if not values:
        raise ValueError("no values")
    count = max(1, math.ceil(fraction * len(values)))
    return float(np.mean(sorted(values)[:count]))


def evaluation_summary(
    accuracies: Mapping[int, float], losses: Mapping[int, float], examples: Mapping[int, int]
) -> dict:
    """A federated evaluation round from each client's accuracy, loss and number of test examples:
    the example-weighted accuracy and loss (what one pooled test set of the clients' splits gives),
    the unweighted mean accuracy, the mean of the worst 10% of clients, and each client's accuracy and loss."""
    clients = sorted(accuracies)
    total = sum(examples[c] for c in clients)
    return {
        "accuracy": sum(examples[c] * accuracies[c] for c in clients) / total,
        "loss": sum(examples[c] * losses[c] for c in clients) / total,
        "mean_accuracy": float(np.mean([accuracies[c] for c in clients])),
        "worst_10pct_accuracy": worst_fraction_mean([accuracies[c] for c in clients]),
        "clients": len(clients),
        "examples": total,
        "accuracies": {str(c): accuracies[c] for c in clients},
        "losses": {str(c): losses[c] for c in clients},
    }


def statistic_spread(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """For every running-statistic buffer (``*.running_mean``, ``*.running_var``) of the clients'
    ``states``: the standard deviation across clients of each entry, averaged over the entries (0 when
    every client has the same statistics). Empty with fewer than two states."""
    if len(states) < 2:
        return {}
    keys = [key for key in states[0] if key.endswith(STAT_SUFFIXES)]
    return {key: float(np.stack([s[key] for s in states]).astype(np.float64).std(axis=0).mean()) for key in keys}
