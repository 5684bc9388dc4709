"""Seeded fault injection for tests and demos (run-config keys ``fault-rate`` and ``fault-kinds``).

Each client, each round, draws a fault with probability ``fault-rate`` from a generator seeded by
(seed, partition, round), so the same config injects the same faults in every run:

- ``raise``: the client fails on its node (its update is replaced by the reason; the node's other clients stay);
- ``nan``: the client replies with NaN weights (the server must drop them);
- ``hang``: the client replies only after ``round-timeout`` has passed (the server moves on without it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedhn.seeding import rng

__all__ = ["FAULT_KINDS", "draw_fault", "poison"]

FAULT_KINDS = ("raise", "nan", "hang")


def draw_fault(seed: int, partition_id: int, server_round: int, rate: float, kinds: tuple[str, ...]) -> str | None:
    """The fault this client injects this round, or ``None``."""
    if rate <= 0 or not kinds:
        return None
    draw = rng("fault", seed, partition_id, server_round)
    return draw.choice(kinds) if draw.random() < rate else None


def poison(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state with every floating-point array set to NaN."""
    return {
        key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
        for key, value in state.items()
    }
