"""Packed local training: K clients in lockstep, each exactly as :func:`fedhn.training.train` alone."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedhn.clipping import AdaptiveClipping
from fedhn.cohort.members import as_members, runs
from fedhn.cohort.protocol import Group, Packed
from fedhn.cohort.sgd import StackedSGD
from fedhn.training import TrainResult, epoch_batches

__all__ = ["Client", "train_packed"]


@dataclass(frozen=True)
class Client:
    """One member's local training: what :func:`fedhn.training.train` takes for it.

    ``augment`` maps the images to one epoch's augmented images, drawing from ``generator`` (as
    ``fedhn.app.task.train_client`` passes it); the epoch's batches are drawn from ``generator`` after it.
    """

    images: Tensor
    labels: Tensor
    batch_size: int
    lr: float
    generator: torch.Generator
    augment: Callable[[Tensor], Tensor] | None = None


def train_packed(
    cohort: Packed,
    clients: Sequence[Client],
    *,
    epochs: int,
    momentum: float,
    weight_decay: float,
    clipping: AdaptiveClipping | None = None,
) -> list[TrainResult]:
    """Train cohort member k on ``clients[k]`` in place, as ``train(model_k, ..., generator=..., augment=...)``
    would: the same batches in the same order, the same SGD steps (with ``clipping``: each member's gradients
    clipped as ``train(..., agc_clip=...)`` clips them), and nothing else.

    Every step, the members that still have a batch train together, grouped by the batch's size; a
    member whose data is done is not updated any more. The members are reordered (and restored after)
    so that each group is a run of consecutive members (views, not copies).
    """
    if len(clients) != cohort.size:
        raise ValueError(f"{len(clients)} clients for a cohort of {cohort.size} members")
    plans = [_plan(client, epochs) for client in clients]
    order = sorted(range(len(clients)), key=lambda k: plans[k])
    permutation = torch.tensor(order)
    reorder = order != sorted(order)
    if reorder:
        cohort.reorder_(permutation)
    try:
        members = [clients[k] for k in order]
        steps = [-plans[k][1] for k in order]
        results = _lockstep(cohort, members, steps, epochs, momentum, weight_decay, clipping)
    finally:
        if reorder:
            cohort.reorder_(torch.argsort(permutation))
    by_client = dict(zip(order, results, strict=True))
    diverged = [k for k in range(len(clients)) if not math.isfinite(by_client[k].loss)]
    if diverged:
        raise FloatingPointError(f"training diverged for clients {diverged}; lower lr")
    return [by_client[k] for k in range(len(clients))]


def _plan(client: Client, epochs: int) -> tuple[int, int, bool, int]:
    """Sort key: batch size, most steps first, then by the size of the last batch of an epoch, so that
    the members of every step's batch-size group are consecutive in the usual cases."""
    sizes = [len(batch) for batch in epoch_batches(len(client.images), client.batch_size, torch.Generator())]
    return sizes[0], -epochs * len(sizes), sizes[-1] != sizes[0], sizes[-1]


def _batches(client: Client, epochs: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The client's batches, drawing from its generator in :func:`fedhn.training.train`'s order."""
    for _ in range(epochs):
        images = client.augment(client.images) if client.augment is not None else client.images
        for index in epoch_batches(len(client.images), client.batch_size, client.generator):
            index = index.to(images.device)
            yield images[index], client.labels[index]


def _lockstep(
    cohort: Packed,
    clients: Sequence[Client],
    total_steps: Sequence[int],
    epochs: int,
    momentum: float,
    weight_decay: float,
    clipping: AdaptiveClipping | None,
) -> list[TrainResult]:
    cohort.train()
    size, device = len(clients), clients[0].images.device
    optimizer = StackedSGD(cohort.stacked_parameters(), torch.tensor([c.lr for c in clients]), momentum, weight_decay)
    streams = [_batches(client, epochs) for client in clients]
    total_loss = torch.zeros(size, device=device)
    steps = [0] * size
    active = list(range(size))
    while active:
        batches = {k: next(streams[k]) for k in active}
        by_size: dict[int, list[int]] = defaultdict(list)
        for k in active:
            by_size[len(batches[k][1])].append(k)
        groups = [
            Group(as_members(ks, size), [batches[k][0] for k in ks], [batches[k][1] for k in ks])
            for ks in by_size.values()
        ]
        grads, losses = cohort.gradients(groups)
        if clipping is not None:
            clipping(cohort.stacked_parameters(), grads, stacked=True)
        optimizer.step(grads, runs(active))
        for group, loss in zip(groups, losses, strict=True):
            total_loss[group.members] += loss
        for k in active:
            steps[k] += 1
        active = [k for k in active if steps[k] < total_steps[k]]
    means = (total_loss.double().cpu() / torch.tensor(steps)).tolist()
    return [
        TrainResult(mean, count, len(c.images) * epochs, min(c.batch_size, len(c.images)))
        for mean, count, c in zip(means, steps, clients, strict=True)
    ]
