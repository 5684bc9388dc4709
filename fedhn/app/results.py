"""A run's results directory: config.json, metrics.jsonl (one line per round) and model.pt."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

import fedhn
from fedhn.app.config import RunConfig

__all__ = [
    "RunRecorder",
    "RunResults",
    "read_results",
    "package_versions",
    "atomic_write",
    "truncate_metrics",
    "with_output_dir",
]

CONFIG_FILE, METRICS_FILE, MODEL_FILE = "config.json", "metrics.jsonl", "model.pt"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "fedhn": fedhn.__version__}
    for package in ("torch", "torchvision", "flwr", "numpy", "ray"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["cuda"] = torch.version.cuda or "none"
    return versions


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old or the
    new file, never a partial one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class RunRecorder:
    """Writes a run's results as they happen: the config at the start, a metrics line per round,
    the model at the end."""

    def __init__(self, out_dir: str | Path, config: Mapping[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"run_config": dict(config), "versions": package_versions()}
        atomic_write(self.out_dir / CONFIG_FILE, json.dumps(payload, indent=2).encode())

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's metrics as a JSON line, flushed to disk."""
        with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(dict(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def save_model(self, state: Mapping[str, torch.Tensor]) -> Path:
        """Save a state_dict loadable with ``torch.load(path, weights_only=True)``."""
        buffer = io.BytesIO()
        torch.save({key: value.detach().cpu() for key, value in state.items()}, buffer)
        path = self.out_dir / MODEL_FILE
        atomic_write(path, buffer.getvalue())
        return path


@dataclass(frozen=True)
class RunResults:
    """A finished or partial run read back from its directory."""

    out_dir: Path
    run_config: dict[str, Any]
    rounds: list[dict[str, Any]]

    @property
    def accuracies(self) -> list[float]:
        return [r["test_accuracy"] for r in self.rounds]

    @property
    def client_rounds(self) -> list[dict[str, Any]]:
        """The rounds with a federated evaluation (``client_evaluation`` of at least one client)."""
        return [r for r in self.rounds if r.get("client_evaluation", {}).get("clients")]

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracies[-1] if self.rounds else None

    @property
    def best(self) -> tuple[float, int] | None:
        """Best test accuracy and its round."""
        if not self.rounds:
            return None
        best = max(self.rounds, key=lambda r: r["test_accuracy"])
        return best["test_accuracy"], best["round"]

    @property
    def wall_time(self) -> float | None:
        return self.rounds[-1]["wall_time"] if self.rounds else None

    def summary(self) -> str:
        """One line: what ran and how it ended."""
        config = self.run_config
        head = f"{config.get('model')}/{config.get('norm')} on {config.get('dataset')}"
        if not self.rounds:
            return f"{head}: no round finished ({self.out_dir})"
        best_accuracy, best_round = self.best
        return (
            f"{head}: {len(self.rounds)}/{config.get('num-server-rounds')} rounds, final test accuracy "
            f"{self.final_accuracy:.4f} (best {best_accuracy:.4f} at round {best_round}), "
            f"{self.wall_time:.1f} s; results in {self.out_dir}"
        )


def read_results(out_dir: str | Path) -> RunResults:
    """Read a run directory.

    Raises:
        FileNotFoundError: ``out_dir`` has no config.json (not a fedhn run directory).
    """
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a fedhn run directory: it has no {CONFIG_FILE}")
    run_config = json.loads(config_path.read_text())["run_config"]
    metrics_path = out_dir / METRICS_FILE
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    return RunResults(out_dir, run_config, [json.loads(line) for line in lines if line.strip()])


def truncate_metrics(out_dir: Path, last_round: int) -> None:
    """Drop metrics lines of rounds after ``last_round`` (not covered by the checkpoint)."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["round"] <= last_round]
    if len(kept) != len(lines):
        atomic_write(path, "".join(line + "\n" for line in kept).encode())


def with_output_dir(config: RunConfig) -> RunConfig:
    """The config with ``out-dir`` set: ``outputs/<time>-<model>-<norm>`` when it is empty."""
    if config.out_dir:
        return config
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{config.model}-{config.norm}".replace("=", "").replace(",", "_")
    return dataclasses.replace(config, out_dir=str(Path("outputs") / name))
