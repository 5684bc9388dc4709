"""State a client keeps between rounds on the node that hosts it (e.g. FedBN's own norm layers),
one entry per (client, name), in the node's ``context.state`` (a Flower RecordDict that lives as
long as the node's process)."""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

__all__ = ["ClientStore"]


class ClientStore:
    """The per-client store of one node."""

    def __init__(self, state: RecordDict) -> None:
        self._state = state

    def get(self, client: int, name: str) -> dict[str, Tensor] | None:
        """What ``client`` stored under ``name``, or None."""
        record = self._state.array_records.get(f"{name}.{client}")
        return None if record is None else record.to_torch_state_dict()

    def put(self, client: int, name: str, tensors: dict[str, Tensor]) -> None:
        """Store ``tensors`` for ``client`` under ``name`` (replacing what was there)."""
        self._state[f"{name}.{client}"] = ArrayRecord(tensors)
