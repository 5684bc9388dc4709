"""Local training and evaluation loops (no Flower here: the apps call these)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.clipping import AdaptiveClipping
from fedhn.data.images import FolderImages, read_batches

__all__ = ["TrainResult", "epoch_batches", "sgd", "train", "evaluate", "client_lr"]

_FUSED_SGD_DEVICES = ("cpu", "cuda")  # where torch.optim.SGD(fused=True) runs; foreach elsewhere


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training did."""

    loss: float  # mean training loss over all steps
    steps: int
    examples: int
    batch_size: int  # the batch size actually used (see epoch_batches)


LR_SCALINGS = ("linear", "sqrt", "none")


def client_lr(lr: float, batch_size: int, scaling: str) -> float:
    """The learning rate at ``batch_size`` of ``lr`` at batch 128, scaled by one of :data:`LR_SCALINGS`: the paper's
    linear rule ``lr * b / 128``, the square-root rule ``lr * sqrt(b / 128)``, or ``lr`` itself (``none``)."""
    if scaling == "linear":
        return lr * batch_size / 128
    return lr * math.sqrt(batch_size / 128) if scaling == "sqrt" else lr


def epoch_batches(num_examples: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled index batches of one epoch.

    Rule for small data: the batch size is at most the number of examples (a client smaller than
    its batch size trains on its whole partition as one batch). A last batch of a single example is
    merged into the batch before it, so no batch ever holds one example when there are two or more
    (a single example cannot train batch statistics); every example is used every epoch.
    """
    if num_examples < 1:
        raise ValueError("cannot train on an empty partition")
    order = torch.randperm(num_examples, generator=generator)
    batches = list(order.split(min(batch_size, num_examples)))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches


def _epoch(
    images: Tensor | FolderImages,
    batch_size: int,
    generator: torch.Generator,
    augment: Callable[[Tensor], Tensor] | None,
    max_batches: int | None,
) -> tuple[list[Tensor], Iterator[Tensor]]:
    """One epoch's index batches and their images: a tensor is augmented as a whole, then shuffled;
    streamed images are shuffled, then read and augmented batch by batch."""
    if isinstance(images, Tensor):
        images = augment(images) if augment is not None else images
        augment = None
    batches = epoch_batches(len(images), batch_size, generator)[:max_batches]
    read = read_batches(images, batches)
    return batches, read if augment is None else (augment(batch) for batch in read)


def sgd(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, device: torch.device, fused: bool | None = None
) -> torch.optim.SGD:
    """SGD over ``model``'s parameters as one fused kernel on CPU and CUDA (``fused=None``), else ``foreach``."""
    if fused is None:
        fused = device.type in _FUSED_SGD_DEVICES
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused, foreach=not fused
    )


def train(
    model: nn.Module,
    images: Tensor | FolderImages,
    labels: Tensor,
    *,
    batch_size: int,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    augment: Callable[[Tensor], Tensor] | None = None,
    fused: bool | None = None,
    max_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
    agc_clip: float = 0.0,
    lr_factor: Callable[[int], float] | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD on (normalized) ``images`` for ``epochs`` epochs (stopping
    after ``max_steps`` steps if given), calling ``after_step()`` after every optimizer step; with
    ``agc_clip > 0`` the gradients are clipped adaptively first (:mod:`fedhn.clipping`, classifier spared).
    With ``lr_factor``, step t uses ``lr * lr_factor(t)`` (``torch.optim.lr_scheduler.LambdaLR``).
    Streamed images (:class:`FolderImages`) are read batch by batch through a DataLoader and
    augmented per batch (the same examples in the same order as in memory; other augmentation draws).

    Data and model stay on the device of ``images``; the loss is accumulated on the device and read
    once at the end (no host sync per step). SGD runs as one fused kernel over all parameters on CPU
    and CUDA (a third of ``foreach``'s optimizer-step time; 3-6% more samples/s at batch 2, see
    docs/benchmarks.md); ``fused=False`` uses ``foreach`` instead (the default elsewhere).
    """
    model.train()
    optimizer = sgd(model, lr, momentum, weight_decay, images.device, fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor) if lr_factor is not None else None
    clipping = AdaptiveClipping(model, agc_clip) if agc_clip else None
    params = list(model.parameters())
    total_loss = torch.zeros((), device=images.device)
    steps = examples = 0
    for _ in range(epochs):
        batches, batch_images = _epoch(
            images, batch_size, generator, augment, None if max_steps is None else max_steps - steps
        )
        for index, inputs in zip(batches, batch_images, strict=True):
            loss = F.cross_entropy(model(inputs), labels[index.to(labels.device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clipping is not None:
                clipping(params, [p.grad for p in params])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach()
            steps += 1
            examples += len(index)
            if after_step is not None:
                after_step()
        if steps == max_steps:
            break
    mean_loss = float(total_loss) / steps
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training diverged (mean loss {mean_loss}); lower lr")
    return TrainResult(mean_loss, steps, examples, min(batch_size, len(images)))


@torch.no_grad()
def evaluate(
    model: nn.Module, images: Tensor | FolderImages, labels: Tensor, batch_size: int = 500
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` in eval mode (streamed images read batch by batch)."""
    model.eval()
    loss = torch.zeros((), device=images.device, dtype=torch.float64)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    chunks = [slice(start, start + batch_size) for start in range(0, len(images), batch_size)]
    for chunk, batch in zip(chunks, read_batches(images, chunks), strict=True):
        logits = model(batch)
        target = labels[chunk]
        loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    return float(loss) / len(images), float(correct) / len(images)
