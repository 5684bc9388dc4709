"""The federated task: what a run config means for data, model and training, shared by the
ClientApp and the ServerApp (which only translate messages). Data and models are cached per
process, so a Ray worker loads its data once, not every round."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedhn.app.config import RunConfig
from fedhn.app.schedule import renorm_limits
from fedhn.clipping import AdaptiveClipping
from fedhn.cohort import Client, FunctionalCohort, pack, train_packed, unpack
from fedhn.data import (
    DATASETS,
    FolderImages,
    FolderOptions,
    ImageData,
    assign_batch_sizes,
    crop_flip,
    domain_partition_indices,
    load_dataset,
    partition_indices,
)
from fedhn.data.feature_shift import FeatureShift, parse_feature_shift
from fedhn.models import build_model
from fedhn.norms import freeze_statistics, is_norm, set_renorm_limits
from fedhn.seeding import torch_generator
from fedhn.training import TrainResult, client_lr, train

__all__ = [
    "ClientData",
    "client_data",
    "client_model",
    "round_model",
    "dataset",
    "device",
    "feature_shift",
    "local_test_size",
    "new_model",
    "norm_keys",
    "partitions",
    "test_data",
    "test_data_by_domain",
    "TrainingRound",
    "client_training",
    "train_client",
    "train_packed_clients",
]


def device() -> torch.device:
    """CUDA when this process sees a GPU (Ray hides GPUs from clients given none), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class ClientData:
    """A client's normalized training images and labels (on the compute device; streamed images are
    read when trained on), its batch size, and its local test split (empty unless ``fraction-evaluate > 0``)."""

    images: Tensor | FolderImages
    labels: Tensor
    batch_size: int
    augment: Callable[[Tensor, torch.Generator], Tensor] | None
    test_images: Tensor
    test_labels: Tensor


def dataset(config: RunConfig) -> ImageData:
    """The run's dataset (cached per process by :func:`fedhn.data.load_dataset`)."""
    folder = FolderOptions(
        config.image_size, config.folder_test_fraction, config.seed, config.cache_dir, config.stream_data
    )
    return load_dataset(config.dataset, config.data_dir, folder)


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


def feature_shift(config: RunConfig) -> FeatureShift:
    """The run's feature shift (``feature-shift``): which transformation each client group sees."""
    return FeatureShift(parse_feature_shift(config.feature_shift), config.seed)


def local_test_size(config: RunConfig, examples: int) -> int:
    """How many of a partition's ``examples`` its local test split holds: ``local-test-fraction`` of
    them, rounded, at least 1 and leaving at least 1 to train on, when ``fraction-evaluate > 0``; else 0."""
    if config.fraction_evaluate == 0.0 or examples < 2:
        return 0
    return min(max(round(config.local_test_fraction * examples), 1), examples - 1)


@functools.cache
def client_data(config: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The partition of client ``partition_id`` out of ``num_partitions`` (through its feature-shift
    transformation, split into training and local test examples), cached per process (a Ray actor
    serves several clients; at most the whole training set is held, as float32)."""
    data = dataset(config)
    index = torch.from_numpy(partitions(config, num_partitions)[partition_id])
    held_out = local_test_size(config, len(index))
    order = torch.randperm(len(index), generator=torch_generator("local-test", config.seed, partition_id))
    test_index, train_index = (index[order[:held_out]], index[order[held_out:]]) if held_out else (index[:0], index)
    shift = feature_shift(config)
    name = shift.group_of(partition_id)

    def images(subset: Tensor, part: str) -> Tensor:
        raw = data.x_train[subset]
        return data.normalized(shift.apply(name, raw, f"{partition_id}-{part}") if name else raw).to(device())

    batch_sizes = assign_batch_sizes(num_partitions, config.batch_sizes, config.batch_size_assignment, config.seed)
    return ClientData(
        images=images(train_index, "train"),
        labels=data.y_train[train_index].to(device()),
        batch_size=batch_sizes[partition_id],
        augment=_augmentation(config, data),
        test_images=images(test_index, "test"),
        test_labels=data.y_train[test_index].to(device()),
    )


@functools.lru_cache(maxsize=2)
def partitions(config: RunConfig, num_partitions: int) -> list[np.ndarray]:
    """Training-example indices of every client, cached per process."""
    data = dataset(config)
    labels = data.y_train.numpy()
    split = dict(seed=config.seed, dirichlet_alpha=config.dirichlet_alpha)
    split["classes_per_partition"] = config.classes_per_partition
    if config.partitioner == "domain":
        domains = None if data.d_train is None else data.d_train.numpy()
        return domain_partition_indices(
            labels, domains, data.domains, num_partitions, config.domain_partitioner, **split
        )
    return partition_indices(labels, num_partitions, config.partitioner, **split)


@functools.lru_cache(maxsize=16)
def test_data(config: RunConfig, shift: str | None = None) -> tuple[Tensor | FolderImages, Tensor]:
    """The normalized test set on the compute device (through feature-shift transformation ``shift``
    when given; streamed: read when evaluated), cached per process."""
    data = dataset(config)
    images = feature_shift(config).apply(shift, data.x_test, "test") if shift else data.x_test
    return data.normalized(images).to(device()), data.y_test.to(device())


@functools.lru_cache(maxsize=2)
def test_data_by_domain(config: RunConfig) -> dict[str, tuple[Tensor | FolderImages, Tensor]]:
    """The central test set of each domain (an image folder's; empty for data of one domain), cached per process."""
    data, (images, labels) = dataset(config), test_data(config)
    if data.d_test is None or len(data.domains) < 2:
        return {}
    members = {name: (data.d_test == index).nonzero().flatten() for index, name in enumerate(data.domains)}
    return {name: (images[index], labels[index]) for name, index in members.items()}


def new_model(config: RunConfig) -> nn.Module:
    """A freshly initialized model for the run's dataset, on the compute device."""
    data = dataset(config)
    model = build_model(config.model, data.num_classes, config.norm, data.channels, data.image_size, config.conv)
    return model.to(device())


@functools.lru_cache(maxsize=2)
def client_model(config: RunConfig) -> nn.Module:
    """The model this process trains its clients in (loaded with each client's state in turn)."""
    return new_model(config)


def round_model(config: RunConfig, server_round: int) -> nn.Module:
    """:func:`client_model` set up for training in ``server_round``: with ``freeze-stats-after = T``, its
    running statistics frozen from round T+1 on (FixBN: the clients normalize with the global statistics
    the server sent)."""
    model = client_model(config)
    if config.freeze_stats_after:
        freeze_statistics(model, server_round > config.freeze_stats_after)
    return model


@functools.lru_cache(maxsize=2)
def norm_keys(config: RunConfig) -> frozenset[str]:
    """State-dict keys of the model's norm layers (selected by module type): what FedBN keeps local."""
    model = client_model(config)
    return frozenset(
        f"{name}.{key}" for name, module in model.named_modules() if is_norm(module) for key in module.state_dict()
    )


@dataclass(frozen=True)
class TrainingRound:
    """A training round as each of its clients sees it: the run, how many clients it has, the round and its
    base learning rate (the server's schedule; each client scales it to its batch size)."""

    config: RunConfig
    num_clients: int
    server_round: int
    lr: float


def client_training(training_round: TrainingRound, client: int) -> Client:
    """What ``client`` trains on in ``training_round``: its partition, batch size, the round's lr scaled by
    ``lr-scaling``, and its own seeded generator for shuffling and augmentation (the one source of both the
    one-by-one and the packed path)."""
    config = training_round.config
    data = client_data(config, client, training_round.num_clients)
    generator = torch_generator("train", config.seed, client, training_round.server_round)
    augment = data.augment
    return Client(
        images=data.images,
        labels=data.labels,
        batch_size=data.batch_size,
        lr=client_lr(training_round.lr, data.batch_size, config.lr_scaling),
        generator=generator,
        augment=(lambda images: augment(images, generator)) if augment else None,
    )


def _client_model(
    training_round: TrainingRound, state: dict[str, Tensor], local_state: dict[str, Tensor] | None
) -> nn.Module:
    """The process's model for the round (:func:`round_model`) loaded with the global ``state`` (then
    ``local_state`` over it, e.g. FedBN's norm layers), with Batch Renorm's bounds for the round
    (:func:`renorm_limits`)."""
    model = round_model(training_round.config, training_round.server_round)
    model.load_state_dict(state)
    if local_state:
        model.load_state_dict(local_state, strict=False)
    set_renorm_limits(model, *renorm_limits(training_round.config, training_round.server_round))
    return model


def train_client(
    training_round: TrainingRound,
    state: dict[str, Tensor],
    client: int,
    local_state: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], TrainResult]:
    """One client's round: the round's model from the global ``state`` (and ``local_state``), trained on the
    client's partition (:func:`client_training`); the new state and what training did."""
    config = training_round.config
    spec = client_training(training_round, client)
    model = _client_model(training_round, state, local_state)
    result = train(
        model,
        spec.images,
        spec.labels,
        batch_size=spec.batch_size,
        epochs=config.local_epochs,
        lr=spec.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        generator=spec.generator,
        augment=spec.augment,
        agc_clip=config.agc_clip,
    )
    # A copy: the process's model is loaded with the next client's state while this one's is still needed.
    return {key: value.detach().clone() for key, value in model.state_dict().items()}, result


def train_packed_clients(
    training_round: TrainingRound,
    state: dict[str, Tensor],
    clients: list[int],
    local_states: dict[int, dict[str, Tensor] | None],
) -> dict[int, tuple[dict[str, Tensor], TrainResult]]:
    """:func:`train_client` for several clients at once, packed into one cohort (:mod:`fedhn.cohort`;
    its vmap fallback for models the cohort layout cannot map): each client's state and result as
    if it had trained alone (to float rounding)."""
    config = training_round.config
    models = [copy.deepcopy(_client_model(training_round, state, local_states.get(client))) for client in clients]
    try:
        cohort = pack(models)
    except (TypeError, ValueError):
        cohort = FunctionalCohort(models)
    results = train_packed(
        cohort,
        [client_training(training_round, client) for client in clients],
        epochs=config.local_epochs,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        clipping=AdaptiveClipping(models[0], config.agc_clip) if config.agc_clip else None,
    )
    return {client: (trained, result) for client, trained, result in zip(clients, unpack(cohort), results, strict=True)}
