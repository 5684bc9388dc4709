"""Per-round hyperparameters: the lr, owned by the server and sent to the clients in each train message,
and Batch Renorm's bounds, which each client derives from the round it trains in (the server sends it)."""

from __future__ import annotations

import math

from fedhn.app.config import RunConfig

__all__ = ["renorm_limits", "round_lr"]


def round_lr(config: RunConfig, server_round: int) -> float:
    """The round's base learning rate (before each client scales it to its batch size)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / config.num_server_rounds))
    return config.lr


def renorm_limits(config: RunConfig, server_round: int) -> tuple[float, float]:
    """Batch Renorm's ``(r_max, d_max)`` in ``server_round``: (1, 0) (BatchNorm) for the first
    ``brn-warmup-rounds`` rounds, then rising linearly to (``brn-r-max``, ``brn-d-max``), reached
    ``brn-relax-rounds`` rounds later. By round, not by client step: clients take different step counts."""
    past_warmup = server_round - config.brn_warmup_rounds
    if config.brn_relax_rounds == 0:
        progress = float(past_warmup > 0)
    else:
        progress = min(max(past_warmup / config.brn_relax_rounds, 0.0), 1.0)
    return 1 + progress * (config.brn_r_max - 1), progress * config.brn_d_max
