"""Packed client cohorts: K clients of one architecture trained in lockstep as one wider model.

- :func:`pack` maps K models layer by layer onto a :class:`Cohort` (grouped convolutions, batched
  linear layers, per-member norms on K*C channels); :func:`unpack` gives each member's state dict.
- :class:`FunctionalCohort` is the ``torch.func.vmap`` fallback for models ``pack`` cannot map.
- :func:`train_packed` trains either kind, each member exactly as :func:`fedhn.training.train` alone.
"""

from fedhn.cohort.functional import FunctionalCohort
from fedhn.cohort.members import Members
from fedhn.cohort.pack import CONVERTERS, Cohort, pack, pack_inputs, unpack
from fedhn.cohort.protocol import Group, Packed
from fedhn.cohort.training import Client, train_packed

__all__ = [
    "CONVERTERS",
    "Client",
    "Cohort",
    "FunctionalCohort",
    "Group",
    "Members",
    "Packed",
    "pack",
    "pack_inputs",
    "train_packed",
    "unpack",
]
