"""Which members of a cohort a computation runs on.

A cohort stores every tensor stacked over its K members (dim 0). A step runs on some of them:
a ``slice`` of consecutive members (the tensors' rows are views, written in place) or, when the
members are not consecutive, a LongTensor of member indices (the rows are copies, written back
with :func:`put_`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Members", "Selection", "as_members", "count", "is_all", "put_", "runs", "take"]

Members = slice | Tensor


def as_members(indices: Sequence[int], size: int) -> Members:
    """``indices`` (ascending, distinct) of a cohort of ``size`` members as a slice when consecutive."""
    first, last = indices[0], indices[-1]
    if last - first + 1 == len(indices):
        return slice(first, last + 1) if len(indices) < size else slice(None)
    return torch.tensor(indices)


def runs(indices: Sequence[int]) -> list[slice]:
    """``indices`` (ascending, distinct) as maximal slices of consecutive members."""
    found: list[slice] = []
    start = previous = indices[0]
    for index in indices[1:]:
        if index != previous + 1:
            found.append(slice(start, previous + 1))
            start = index
        previous = index
    found.append(slice(start, previous + 1))
    return found


def count(members: Members, size: int) -> int:
    """Number of members selected out of ``size``."""
    return len(range(size)[members]) if isinstance(members, slice) else len(members)


def is_all(members: Members, size: int) -> bool:
    """Whether ``members`` is a slice of all ``size`` members."""
    return isinstance(members, slice) and range(size)[members] == range(size)


def take(tensor: Tensor, members: Members) -> Tensor:
    """The rows of ``members``: ``tensor`` itself for all members, a view for a slice, a copy for indices."""
    if isinstance(members, slice):
        return tensor if is_all(members, len(tensor)) else tensor[members]
    return tensor.index_select(0, members.to(tensor.device))


@torch.no_grad()
def put_(tensor: Tensor, members: Members, rows: Tensor) -> None:
    """Write back ``rows`` taken by :func:`take` (a no-op for a slice: its rows are views)."""
    if not isinstance(members, slice):
        tensor.index_copy_(0, members.to(tensor.device), rows)


class Selection:
    """The members the layers of one cohort run on in the current forward (set by the cohort)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.members: Members = slice(None)

    @property
    def count(self) -> int:
        """Number of members selected."""
        return count(self.members, self.size)
