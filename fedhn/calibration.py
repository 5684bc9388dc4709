"""Federated precise statistics (run-config key ``calibrate-stats``).

Running statistics are moving averages of noisy batch statistics; at batch 2-4 they can be far from
the statistics of the data. Calibration replaces them, layer by layer in the order the forward
reaches them, by the population statistics of each layer's input as the network computes it in eval
mode with the layers before it already calibrated. For every layer, each client sums the count, the
sum and the sum of squares of each channel of that input over its whole partition; sums add up
across clients, so the pooled result is the same computation done over the union of the partitions,
and the layer sets its running statistics from the channel moments
(:meth:`HeterologousNorm.set_population_statistics`, :meth:`BatchRenorm.set_population_statistics`).

One pass per layer is what makes it exact: setting all layers from one pass leaves every layer
calibrated for inputs made with the old statistics upstream, which in our resnet8 runs
cost 18-21 points of test accuracy (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from fedhn.data.images import FolderImages, read_batches
from fedhn.norms import BatchRenorm, HeterologousNorm

__all__ = ["calibrated_layers", "calibration_order", "layer_sums", "pool_sums", "apply_sums", "calibrate"]


class _LayerReached(Exception):
    """Stops a forward once the layer being calibrated has seen its input."""


CalibratedLayer = HeterologousNorm | BatchRenorm


def calibrated_layers(model: nn.Module) -> dict[str, CalibratedLayer]:
    """The norm layers with running statistics (HN family, Batch Renorm), by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, HeterologousNorm | BatchRenorm) and m.has_running_stats
    }


@torch.no_grad()
def calibration_order(model: nn.Module, example: Tensor) -> list[str]:
    """The calibrated layers in the order an eval-mode forward of ``example`` reaches them."""
    order: list[str] = []
    layers = calibrated_layers(model)
    handles = [
        layer.register_forward_pre_hook(lambda _module, _inputs, name=name: order.append(name))
        for name, layer in layers.items()
    ]
    try:
        model.eval()
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def layer_sums(model: nn.Module, images: Tensor | FolderImages, layer: str, batch_size: int = 500) -> dict[str, Tensor]:
    """Per-channel count, sum and sum of squares (float64) of ``layer``'s input over ``images`` (streamed
    ones read batch by batch), with the model in eval mode; each forward stops at the layer. Keys:
    ``<layer>.count|sum|sumsq``."""
    totals = {key: torch.zeros((), dtype=torch.float64) for key in ("count", "sum", "sumsq")}

    def record(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].reshape(inputs[0].shape[0], inputs[0].shape[1], -1).double()
        totals["count"] = totals["count"] + x.shape[0] * x.shape[2]
        totals["sum"] = totals["sum"] + x.sum(dim=(0, 2)).cpu()
        totals["sumsq"] = totals["sumsq"] + x.square().sum(dim=(0, 2)).cpu()
        raise _LayerReached

    handle = calibrated_layers(model)[layer].register_forward_pre_hook(record)
    try:
        model.eval()
        for batch in read_batches(images, [slice(s, s + batch_size) for s in range(0, len(images), batch_size)]):
            try:
                model(batch)
            except _LayerReached:
                pass
    finally:
        handle.remove()
    return {f"{layer}.{key}": value.reshape(-1) for key, value in totals.items()}


def pool_sums(parts: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Add the clients' sums key by key."""
    pooled: dict[str, Tensor] = {}
    for part in parts:
        for key, value in part.items():
            pooled[key] = pooled[key] + value if key in pooled else value.clone()
    return pooled


def apply_sums(model: nn.Module, sums: Mapping[str, Tensor]) -> list[str]:
    """Set the running statistics of every layer that ``sums`` has entries for; return those layers.

    Raises:
        ValueError: sums of another model (a layer it lacks, an entry missing, or another channel count).
    """
    layers = calibrated_layers(model)
    done = []
    for name in dict.fromkeys(key.rpartition(".")[0] for key in sums):
        if name not in layers:
            raise ValueError(f"the statistics are for layer {name!r}, which the model has no calibrated layer of")
        try:
            count, total, squares = (sums[f"{name}.{key}"] for key in ("count", "sum", "sumsq"))
        except KeyError:
            raise ValueError(f"the statistics of layer {name!r} lack count, sum or sumsq") from None
        if total.shape != (layers[name].num_features,):
            raise ValueError(
                f"layer {name!r} has {layers[name].num_features} channels, its statistics {tuple(total.shape)}"
            )
        n = count.item()
        mean = total / n
        var = (squares / n - mean.square()).clamp_min(0)
        layers[name].set_population_statistics(mean, var, n)
        done.append(name)
    return done


def calibrate(model: nn.Module, images: Tensor, batch_size: int = 500) -> list[str]:
    """Calibrate ``model`` on ``images`` in one process, layer by layer (what ``calibrate-stats``
    computes over the clients' partitions); return the layers set, in order."""
    order = calibration_order(model, images[:1])
    for name in order:
        apply_sums(model, layer_sums(model, images, name, batch_size))
    return order
