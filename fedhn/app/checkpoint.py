"""Per-round checkpoints of a run, and loading state-dict files safely.

``checkpoint.pt`` in out-dir holds the global model after the last complete round, that round and
the run config (client sampling is seeded per round, so nothing else is needed to continue). It is written atomically after the
round's metrics line, so it is the source of truth on resume: metrics lines of later rounds (a round
that finished while the checkpoint was being written) are dropped, and every round appears in
``metrics.jsonl`` exactly once.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fedhn.app.config import KEYS, RunConfig
from fedhn.app.results import METRICS_FILE, atomic_write, truncate_metrics

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "check_restore",
    "check_state_fits",
    "config_changes",
    "load_checkpoint",
    "load_state_dict_file",
    "restore",
    "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "fedhn-checkpoint-1"
# Keys that may differ between a run and its resumption (declared resumable in RunConfig).
RESUMABLE_CHANGES = frozenset(name for name, key in KEYS.items() if key.resumable)
DEFAULTS = RunConfig().to_dict()


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    model: dict[str, Tensor]
    run_config: dict[str, Any]


def save_checkpoint(
    out_dir: Path, server_round: int, model: Mapping[str, Tensor], run_config: Mapping[str, Any]
) -> None:
    """Atomically write the checkpoint of a complete round."""
    buffer = io.BytesIO()
    payload = {
        "format": FORMAT,
        "round": server_round,
        "model": {key: value.detach().cpu() for key, value in model.items()},
        "run_config": dict(run_config),
    }
    torch.save(payload, buffer)
    atomic_write(out_dir / CHECKPOINT_FILE, buffer.getvalue())


def load_state_dict_file(path: Path, what: str = "model file") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted, not a PyTorch file, or holds more than tensors and plain data.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(
            f"{what} {path} cannot be loaded as a PyTorch state_dict (weights_only=True): {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'corrupted file'}"
        ) from None


def check_state_fits(state: Any, model: nn.Module, path: Path) -> dict[str, Tensor]:
    """The state if it matches ``model``'s state_dict key by key and shape by shape.

    Raises:
        ValueError: not a state_dict, or one of another model (the message names the differences).
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    mismatched = [k for k in set(expected) & set(state) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} holds the state of another model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatches {sorted(mismatched)[:3]} (of {len(missing)}, {len(unexpected)}, {len(mismatched)})"
        )
    return dict(state)


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """What a run with run config ``current`` changes against one that ran with ``saved``, beyond the keys a
    resume may change (``"key: old -> new, ..."``, empty when nothing). A key added to fedhn after ``saved``
    was written counts as its default there."""
    saved = DEFAULTS | dict(saved)
    changed = sorted(
        key for key in set(current) | set(saved) if key not in RESUMABLE_CHANGES and current.get(key) != saved.get(key)
    )
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)


def load_checkpoint(out_dir: Path, run_config: Mapping[str, Any], model: nn.Module) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` (``None`` if there is none), checked against the run.

    Raises:
        ValueError: a corrupted or foreign checkpoint, or one of a run with a different config.
    """
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    payload = load_state_dict_file(path, "checkpoint")
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fedhn checkpoint; move it away or choose another out-dir")
    changed = config_changes(payload["run_config"], run_config)
    if changed:
        raise ValueError(f"{path} belongs to a run with another config ({changed}); resume with the same config")
    return Checkpoint(int(payload["round"]), check_state_fits(payload["model"], model, path), payload["run_config"])


def check_restore(config: RunConfig, model: nn.Module) -> Checkpoint | None:
    """Validate where a run starts, without changing anything: the checkpoint to resume from (or
    ``None``), and the ``init-model`` file when there is no checkpoint.

    Raises:
        FileNotFoundError, ValueError: results in out-dir without ``resume``, a bad checkpoint or a
            bad init-model; the message says which and how to fix it.
    """
    out_dir = Path(config.out_dir)
    if config.resume:
        checkpoint = load_checkpoint(out_dir, config.to_dict(), model)
        if checkpoint is not None:
            return checkpoint
    elif config.out_dir and any((out_dir / name).exists() for name in (METRICS_FILE, CHECKPOINT_FILE)):
        raise ValueError(
            f"out-dir {out_dir} already holds a run; set resume = true to continue it, or choose another out-dir"
        )
    if config.init_model:
        path = Path(config.init_model)
        check_state_fits(load_state_dict_file(path), model, path)
    return None


def restore(config: RunConfig, model: nn.Module) -> int:
    """Load the model a run starts from; return the first round to run.

    ``resume`` with a checkpoint in out-dir continues after its round (metrics lines of later rounds
    are dropped); otherwise the run starts at round 1 from ``init-model`` or the model as built (and
    a resumed run without a checkpoint drops the metrics of rounds that no checkpoint covers).
    """
    checkpoint = check_restore(config, model)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
        truncate_metrics(Path(config.out_dir), checkpoint.server_round)
        return checkpoint.server_round + 1
    if config.resume:
        truncate_metrics(Path(config.out_dir), 0)
    if config.init_model:
        model.load_state_dict(load_state_dict_file(Path(config.init_model)))
    return 1
