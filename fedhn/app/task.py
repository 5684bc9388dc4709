"""The federated task: what a run config means for data, model and training, shared by the
ClientApp and the ServerApp (which only translate messages). Everything here is cached per
process, so a Ray worker loads its data once, not every round."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedhn.app.checkpoint import check_restore
from fedhn.app.config import RunConfig
from fedhn.calibration import layer_sums
from fedhn.data import DATASETS, ImageData, assign_batch_sizes, crop_flip, load_dataset, partition_indices
from fedhn.models import build_model
from fedhn.norms import is_norm
from fedhn.training import TrainResult, client_lr, train

__all__ = [
    "ClientData",
    "client_data",
    "test_data",
    "new_model",
    "norm_keys",
    "partitions",
    "train_client",
    "round_lr",
    "device",
]


def device() -> torch.device:
    """CUDA when this process sees a GPU (Ray hides GPUs from clients given none), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class ClientData:
    """A client's normalized training images and labels (on the compute device) and its batch size."""

    images: Tensor
    labels: Tensor
    batch_size: int
    augment: Callable[[Tensor, torch.Generator], Tensor] | None


def _dataset(config: RunConfig) -> ImageData:
    return load_dataset(config.dataset, config.data_dir)


def _augmentation(config: RunConfig, data: ImageData) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    mode = config.augment
    if mode == "auto":
        cifar_like = data.channels == 3 and data.image_size == 32
        mode = DATASETS[config.dataset][1] if config.dataset in DATASETS else ("crop-flip" if cifar_like else "none")
    if mode == "none":
        return None
    mean, std = data.channel_stats
    black = -mean / std  # zero padding of the raw image, as the paper pads
    return lambda images, generator: crop_flip(images, black, generator)


@functools.cache
def client_data(config: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The partition of client ``partition_id`` out of ``num_partitions``, cached per process (a Ray
    actor serves several clients; at most the whole training set is held, as float32)."""
    data = _dataset(config)
    index = torch.from_numpy(partitions(config, num_partitions)[partition_id])
    target = device()
    batch_sizes = assign_batch_sizes(num_partitions, config.batch_sizes, config.batch_size_assignment, config.seed)
    return ClientData(
        images=data.normalized(data.x_train[index]).to(target),
        labels=data.y_train[index].to(target),
        batch_size=batch_sizes[partition_id],
        augment=_augmentation(config, data),
    )


@functools.lru_cache(maxsize=2)
def partitions(config: RunConfig, num_partitions: int) -> list[np.ndarray]:
    """Training-example indices of every client, cached per process."""
    return partition_indices(
        _dataset(config).y_train.numpy(),
        num_partitions,
        config.partitioner,
        config.seed,
        config.dirichlet_alpha,
        config.classes_per_partition,
    )


@functools.lru_cache(maxsize=2)
def test_data(config: RunConfig) -> tuple[Tensor, Tensor]:
    """The normalized test set on the compute device, cached per process."""
    data = _dataset(config)
    return data.normalized(data.x_test).to(device()), data.y_test.to(device())


def new_model(config: RunConfig) -> nn.Module:
    """A freshly initialized model for the run's dataset, on the compute device."""
    data = _dataset(config)
    model = build_model(config.model, data.num_classes, config.norm, data.channels, data.image_size)
    return model.to(device())


@functools.lru_cache(maxsize=2)
def _client_model(config: RunConfig) -> nn.Module:
    return new_model(config)


@functools.lru_cache(maxsize=2)
def norm_keys(config: RunConfig) -> frozenset[str]:
    """State-dict keys of the model's norm layers (selected by module type): what FedBN keeps local."""
    model = _client_model(config)
    return frozenset(
        f"{name}.{key}" for name, module in model.named_modules() if is_norm(module) for key in module.state_dict()
    )


def run_problems(config: RunConfig, num_partitions: int = 0) -> list[str]:
    """What would make a run fail, found before it starts: the dataset does not load, the norm does
    not fit the model or the data, out-dir, checkpoint or init-model do not fit the run, the clients
    would get no data or batch sizes larger than every partition. ``num_partitions=0`` skips the
    partition checks."""
    try:
        data = _dataset(config)
    except (FileNotFoundError, ValueError) as error:
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


def client_statistics(
    config: RunConfig, state: dict[str, Tensor], partition_id: int, num_partitions: int, layer: str
) -> tuple[dict[str, Tensor], int]:
    """The sums of :func:`fedhn.calibration.layer_sums` of ``layer``'s input under the global ``state``
    over the client's whole partition, and its number of examples."""
    data = client_data(config, partition_id, num_partitions)
    model = _client_model(config)
    model.load_state_dict(state)
    return layer_sums(model, data.images, layer, config.eval_batch_size), len(data.labels)


def round_lr(config: RunConfig, server_round: int) -> float:
    """The round's base learning rate (before batch-size scaling)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / config.num_server_rounds))
    return config.lr


def train_client(
    config: RunConfig,
    state: dict[str, Tensor],
    partition_id: int,
    num_partitions: int,
    server_round: int,
    local_state: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], TrainResult]:
    """One client's round: load the global ``state`` (then ``local_state`` over it, e.g. FedBN's
    norm layers), train on the partition, return the new state and what training did."""
    data = client_data(config, partition_id, num_partitions)
    model = _client_model(config)
    model.load_state_dict(state)
    if local_state:
        model.load_state_dict(local_state, strict=False)
    generator = torch.Generator().manual_seed(hash((config.seed, partition_id, server_round)) % 2**63)
    result = train(
        model,
        data.images,
        data.labels,
        batch_size=data.batch_size,
        epochs=config.local_epochs,
        lr=client_lr(round_lr(config, server_round), data.batch_size, config.lr_scaling),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        generator=generator,
        augment=(lambda images: data.augment(images, generator)) if data.augment else None,
    )
    return model.state_dict(), result
