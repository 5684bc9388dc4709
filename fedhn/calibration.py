"""Federated precise statistics (run-config key ``calibrate-stats``).

Running statistics are moving averages of noisy batch statistics; at batch 2-4 they can be far from
the statistics of the data. Here every client runs the global model in eval mode over its whole
partition and sums, for the input of every norm layer with batch sets, the count, the sum and the
sum of squares of each channel. Sums add up across clients, so the server's pooled result is the
same computation done over the union of the partitions; each layer then sets its running statistics
from the channel moments (:meth:`HeterologousNorm.set_population_statistics`).

Upstream layers run in eval mode with the statistics the round started with, so one calibration pass
makes each layer exact for its input as the current model produces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from fedhn.norms import HeterologousNorm

__all__ = ["calibrated_layers", "channel_sums", "pool_sums", "apply_sums"]


def calibrated_layers(model: nn.Module) -> dict[str, HeterologousNorm]:
    """The norm layers with running statistics, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HeterologousNorm) and m.has_running_stats}


@torch.no_grad()
def channel_sums(model: nn.Module, images: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """Per-channel count, sum and sum of squares (float64) of each calibrated layer's input over
    ``images``, with the model in eval mode. Keys: ``<layer>.count``, ``<layer>.sum``, ``<layer>.sumsq``."""
    layers = calibrated_layers(model)
    sums: dict[str, Tensor] = {}

    def record(name: str):
        def hook(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            x3 = x.reshape(x.shape[0], x.shape[1], -1).double()
            for key, value in (
                ("count", torch.tensor([x3.shape[0] * x3.shape[2]], dtype=torch.float64)),
                ("sum", x3.sum(dim=(0, 2)).cpu()),
                ("sumsq", x3.square().sum(dim=(0, 2)).cpu()),
            ):
                full = f"{name}.{key}"
                sums[full] = sums[full] + value if full in sums else value

        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return sums


def pool_sums(parts: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Add the clients' sums key by key."""
    pooled: dict[str, Tensor] = {}
    for part in parts:
        for key, value in part.items():
            pooled[key] = pooled[key] + value if key in pooled else value.clone()
    return pooled


def apply_sums(model: nn.Module, sums: Mapping[str, Tensor]) -> list[str]:
    """Set the running statistics of every calibrated layer from pooled sums; return the layers set.

    Raises:
        ValueError: sums of another model (a layer missing, or another channel count).
    """
    done = []
    for name, layer in calibrated_layers(model).items():
        try:
            count, total, squares = (sums[f"{name}.{key}"] for key in ("count", "sum", "sumsq"))
        except KeyError:
            raise ValueError(f"the pooled statistics have no entry for layer {name!r}") from None
        if total.shape != (layer.num_features,):
            raise ValueError(f"layer {name!r} has {layer.num_features} channels, its statistics {tuple(total.shape)}")
        n = count.item()
        mean = total / n
        var = (squares / n - mean.square()).clamp_min(0)
        layer.set_population_statistics(mean, var, n)
        done.append(name)
    return done
