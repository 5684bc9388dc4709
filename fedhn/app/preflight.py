"""Pre-flight checks: what would make a run fail, found before anything expensive starts (the
ServerApp checks its run; ``fedhn compare`` and ``fedhn deploy run`` check every run before they
start any Flower or Ray process)."""

from __future__ import annotations

import torch

from fedhn.app.checkpoint import check_restore
from fedhn.app.config import RunConfig
from fedhn.app.task import dataset, device, new_model, partitions
from fedhn.app.tensorboard_log import TENSORBOARD_MISSING, tensorboard_available
from fedhn.data import FolderImages, ImageData

__all__ = ["run_problems"]


def run_problems(config: RunConfig, num_partitions: int = 0) -> list[str]:
    """What would make a run fail, found before it starts: the dataset does not load, the norm does
    not fit the model or the data, out-dir, checkpoint or init-model do not fit the run, the clients
    would get no data, batch sizes larger than every partition or no local test split, tensorboard is
    asked for but not installed. ``num_partitions=0`` skips the
    partition checks."""
    if config.tensorboard and not tensorboard_available():
        return [TENSORBOARD_MISSING]
    try:
        data = dataset(config)
    except (OSError, ValueError) as error:
        return [f"dataset = {config.dataset!r}: {error}"]
    if config.feature_shift != "none" and isinstance(data.x_train, FolderImages):
        return [
            f"feature-shift = {config.feature_shift!r} transforms images held in memory, but {config.dataset} is "
            "streamed from disk; set stream-data = false (if it fits in memory) or feature-shift = none"
        ]
    try:
        model = new_model(config).eval()
        with torch.no_grad():
            model(torch.zeros(2, data.channels, data.image_size, data.image_size, device=device()))
    except ValueError as error:
        conv = "" if config.conv == "plain" else f" with conv = {config.conv!r}"
        return [f"norm = {config.norm!r} does not fit model {config.model!r}{conv} on {config.dataset}: {error}"]
    try:
        check_restore(config, model)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    return _partition_problems(config, data, num_partitions) if num_partitions else []


def _partition_problems(config: RunConfig, data: ImageData, num_partitions: int) -> list[str]:
    """The clients would get no data, too little for a local test split, or batch sizes larger than every partition."""
    examples = len(data.y_train)
    if num_partitions > examples:
        return [f"{num_partitions} clients but {config.dataset} has {examples} training examples; use fewer clients"]
    try:
        sizes = [len(indices) for indices in partitions(config, num_partitions)]
    except ValueError as error:
        return [f"partitioner = {config.partitioner!r}: {error}"]
    largest = max(sizes)
    if config.fraction_evaluate > 0 and min(sizes) < 2:
        return [
            f"fraction-evaluate = {config.fraction_evaluate}: a client of {num_partitions} holds {min(sizes)} example, "
            "too few to split off a local test set; use fewer clients or fraction-evaluate = 0"
        ]
    if min(config.batch_sizes) > largest:
        return [
            f"batch-sizes = {','.join(map(str, config.batch_sizes))}: all larger than every client's partition "
            f"(at most {largest} examples with {num_partitions} clients); use smaller batch sizes"
        ]
    return []
