"""torchvision classification models with their norms swapped and a stem for small images."""

from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["build_torchvision", "torchvision_names"]


def torchvision_names() -> list[str]:
    """Classification architectures torchvision provides."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(name: str, num_classes: int, in_channels: int, small_input: bool = True) -> nn.Module:
    """Build torchvision's ``name`` (random weights) for ``in_channels``-channel images.

    With ``small_input`` the stem keeps the resolution of 8-32 pixel images, as CIFAR versions of
    these networks do: the first convolution gets stride 1 and the stem's max-pool is removed.
    """
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if small_input:
        first_conv.stride = (1, 1)
        _remove_first_max_pool(model)
    if in_channels != first_conv.in_channels:
        _replace_module(model, first_conv, _with_in_channels(first_conv, in_channels))
    return model


def _remove_first_max_pool(model: nn.Module) -> None:
    pool = next((m for m in model.modules() if isinstance(m, nn.MaxPool2d)), None)
    if pool is not None:
        _replace_module(model, pool, nn.Identity())


def _with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is old:
                setattr(parent, child_name, new)
                return
    raise LookupError("module not found in model")
