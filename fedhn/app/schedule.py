"""Per-round hyperparameters, owned by the server and sent to the clients in each train message."""

from __future__ import annotations

import math

from fedhn.app.config import RunConfig

__all__ = ["round_lr"]


def round_lr(config: RunConfig, server_round: int) -> float:
    """The round's base learning rate (before each client scales it to its batch size)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / config.num_server_rounds))
    return config.lr
