"""Pre-flight checks: what would make a run fail, found before anything expensive starts (the
ServerApp checks its run; ``fedhn compare`` and ``fedhn deploy run`` check every run before they
start any Flower or Ray process)."""

from __future__ import annotations

import torch

from fedhn.app.checkpoint import check_restore
from fedhn.app.config import RunConfig
from fedhn.app.task import dataset, device, new_model, partitions

__all__ = ["run_problems"]


def run_problems(config: RunConfig, num_partitions: int = 0) -> list[str]:
    """What would make a run fail, found before it starts: the dataset does not load, the norm does
    not fit the model or the data, out-dir, checkpoint or init-model do not fit the run, the clients
    would get no data or batch sizes larger than every partition. ``num_partitions=0`` skips the
    partition checks."""
    try:
        data = dataset(config)
    except (OSError, ValueError) as error:
        return [f"dataset = {config.dataset!r}: {error}"]
    try:
        model = new_model(config).eval()
        with torch.no_grad():
            model(torch.zeros(2, data.channels, data.image_size, data.image_size, device=device()))
    except ValueError as error:
        return [f"norm = {config.norm!r} does not fit model {config.model!r} on {config.dataset}: {error}"]
    try:
        check_restore(config, model)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    if not num_partitions:
        return []
    examples = len(data.y_train)
    if num_partitions > examples:
        return [f"{num_partitions} clients but {config.dataset} has {examples} training examples; use fewer clients"]
    try:
        largest = max(len(indices) for indices in partitions(config, num_partitions))
    except ValueError as error:
        return [f"partitioner = {config.partitioner!r}: {error}"]
    if min(config.batch_sizes) > largest:
        return [
            f"batch-sizes = {','.join(map(str, config.batch_sizes))}: all larger than every client's partition "
            f"(at most {largest} examples with {num_partitions} clients); use smaller batch sizes"
        ]
    return []
