"""What packed training needs from a cohort: the interface both cohort kinds implement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from torch import Tensor

from fedhn.cohort.members import Members

__all__ = ["Group", "Packed"]


class Group(NamedTuple):
    """One step's batches of some members that share a batch size: member i of ``members`` trains on
    ``images[i]`` (B, C, H, W) with ``labels[i]`` (B,)."""

    members: Members
    images: Sequence[Tensor]
    labels: Sequence[Tensor]


class Packed(Protocol):
    """K models of one architecture whose tensors are stacked over members (dim 0)."""

    size: int

    def train(self, mode: bool = True) -> object:
        """Put the members in training mode."""

    def stacked_parameters(self) -> list[Tensor]:
        """The trainable tensors, each (K, ...)."""

    def gradients(self, groups: Sequence[Group]) -> tuple[list[Tensor], list[Tensor]]:
        """Each member's gradient of its mean cross-entropy on its batch, as one (K, ...) tensor per
        parameter (rows of members in no group are unspecified), and each group's losses (k,).
        Running statistics of the members in ``groups`` advance."""

    def reorder_(self, order: Tensor) -> None:
        """Permute the members in place: member i becomes the old member ``order[i]``."""

    def stacked_state(self) -> dict[str, Tensor]:
        """Every member's state-dict entries stacked over members, in state-dict order."""
