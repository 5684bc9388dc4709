"""Side-by-side timing: candidates measured in interleaved rounds, reported as medians and ratios."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date

import torch

__all__ = ["measure", "environment", "markdown_table", "synchronizer"]


def measure(
    candidates: Mapping[str, Callable[[], object]],
    repeats: int,
    min_seconds: float,
    synchronize: Callable[[], object] = lambda: None,
) -> dict[str, float]:
    """Median seconds per call of each candidate.

    Each candidate is warmed up and given a call count so that one timing lasts at least ``min_seconds``;
    then ``repeats`` rounds each time every candidate once, in turn, so that drifts of the machine (other
    processes, clock) fall on all candidates alike. ``synchronize`` runs before a timing starts and before it
    ends (``torch.cuda.synchronize`` for work queued on a GPU).
    """
    calls = {}
    for name, run in candidates.items():
        run()
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        calls[name] = max(1, round(min_seconds / max(time.perf_counter() - start, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(calls[name]):
                run()
            synchronize()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def synchronizer(device: torch.device) -> Callable[[], object]:
    """What :func:`measure` must call to wait for ``device``'s queued work."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def environment() -> str:
    """Date, CPU, threads and torch version, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return (
        f"{date.today().isoformat()}, {cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats print with two decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
