"""State a client keeps between rounds on the node that hosts it (e.g. FedBN's own norm layers),
one entry per (client, name).

Without a directory the entries live in the node's ``context.state`` (a Flower RecordDict that
lives as long as the node's process). With a directory they are files versioned by round,
``<directory>/<name>/<client>/round-<r>.pt``, written atomically, so that they survive a restart
and a resumed run finds the state of the round it resumes from:

- a client training round r reads the version of the latest round before r and writes version r;
- it keeps the version it read (the one a run resumed from round r-1 needs) and version r, and
  deletes older versions and later ones (left by a run that was killed before its checkpoint);
- a server resuming from the checkpoint of round k drops the versions after k
  (:func:`drop_versions_after`), so that no client reads a round the checkpoint does not cover.

The directory is the node's ``state-dir`` (node config, a deployment) or the one the server sends
in the train config (``client-state-dir``: ``<out-dir>/client-state``, a simulation).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

from fedhn.app.results import atomic_write

__all__ = [
    "NODE_STATE_DIR",
    "TRAIN_STATE_DIR",
    "ClientStore",
    "client_state_dir",
    "drop_versions_after",
    "store_directory",
]

NODE_STATE_DIR = "state-dir"  # node-config key: where a deployment node keeps its clients' state
TRAIN_STATE_DIR = "client-state-dir"  # train-config entry: the run's directory for it (simulation)
_VERSION = re.compile(r"round-(\d+)\.pt")


def client_state_dir(out_dir: str | Path) -> Path:
    """The directory of a run's client state: ``<out-dir>/client-state``, absolute."""
    return Path(out_dir).resolve() / "client-state"


def store_directory(node_config: Mapping, train_config: Mapping) -> Path | None:
    """Where a node keeps its clients' state: its node config's ``state-dir``, else the train
    config's ``client-state-dir``, else nowhere (the node's memory)."""
    directory = node_config.get(NODE_STATE_DIR) or train_config.get(TRAIN_STATE_DIR)
    return Path(str(directory)) if directory else None


def _versions(folder: Path) -> dict[int, Path]:
    """The version files in one client's folder, by round."""
    if not folder.is_dir():
        return {}
    return {int(match[1]): path for path in folder.iterdir() if (match := _VERSION.fullmatch(path.name))}


def drop_versions_after(directory: Path, last_round: int) -> None:
    """Delete every version written in a round after ``last_round`` (a resumed run's checkpoint)."""
    for folder in directory.glob("*/*"):
        for server_round, path in _versions(folder).items():
            if server_round > last_round:
                path.unlink(missing_ok=True)


class ClientStore:
    """The per-client store of one node: in ``state`` or, with a ``directory``, in files versioned by
    round; ``server_round`` is the round the node trains now."""

    def __init__(self, state: RecordDict, directory: Path | None = None, server_round: int = 0) -> None:
        self._state, self._directory, self._round = state, directory, server_round

    def get(self, client: int, name: str) -> dict[str, Tensor] | None:
        """What ``client`` stored under ``name`` (before this round), or None."""
        if self._directory is None:
            record = self._state.array_records.get(f"{name}.{client}")
            return None if record is None else record.to_torch_state_dict()
        earlier = [r for r in _versions(self._folder(client, name)) if r < self._round]
        if not earlier:
            return None
        path = self._folder(client, name) / f"round-{max(earlier)}.pt"
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, client: int, name: str, tensors: dict[str, Tensor]) -> None:
        """Store ``tensors`` for ``client`` under ``name`` as this round's (replacing what was there)."""
        if self._directory is None:
            self._state[f"{name}.{client}"] = ArrayRecord(tensors)
            return
        folder = self._folder(client, name)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({key: value.detach().cpu() for key, value in tensors.items()}, buffer)
        atomic_write(folder / f"round-{self._round}.pt", buffer.getvalue())
        versions = _versions(folder)
        kept = {self._round, max((r for r in versions if r < self._round), default=self._round)}
        for server_round, path in versions.items():
            if server_round not in kept:
                path.unlink(missing_ok=True)

    def _folder(self, client: int, name: str) -> Path:
        return self._directory / name / str(client)
