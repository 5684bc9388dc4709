"""Random sources derived from a run's seed: one idiom for every seeded draw.

A draw is named by its parts, e.g. ``("fault", seed, partition, round)``; the source is
``random.Random("fault-<seed>-<partition>-<round>")``, the same in every process and run
(:class:`strategies.StatsFedAvg` samples clients with ``random.Random("sampling-<seed>-<round>")``,
the same idiom written out, since ``strategies`` does not depend on fedhn).
"""

from __future__ import annotations

import random

import torch

__all__ = ["rng", "torch_generator"]


def rng(*parts: int | str) -> random.Random:
    """The Python random source of the draw named by ``parts``."""
    return random.Random("-".join(map(str, parts)))


def torch_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` for the draw named by ``parts``."""
    return torch.Generator().manual_seed(rng(*parts).getrandbits(63))
