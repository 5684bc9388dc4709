"""Build norm layers from specs, and swap the norm layers of any model."""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import chain

from torch import nn
from torchvision.models.convnext import LayerNorm2d

from fedhn.norms.layers import HeterologousNorm
from fedhn.norms.spec import NormSpec, parse_spec

__all__ = ["norm_layer", "replace_norms", "is_norm", "NORM_TYPES"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    LayerNorm2d,
    HeterologousNorm,
)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalizes over channels (the layers :func:`replace_norms` swaps)."""
    return isinstance(module, NORM_TYPES)


def norm_layer(spec: str | NormSpec, **kwargs) -> Callable[[int], HeterologousNorm]:
    """A factory ``num_features -> HeterologousNorm`` for ``spec`` (usable as torchvision's ``norm_layer``).

    The spec is parsed now, so a bad spec fails here; group counts are checked per layer.
    ``kwargs`` (eps, momentum, affine) go to every layer.
    """
    parsed = parse_spec(spec)
    return functools.partial(
        HeterologousNorm, mean="+".join(map(str, parsed.mean)), std="+".join(map(str, parsed.std)), **kwargs
    )


def replace_norms(model: nn.Module, spec: str | NormSpec) -> nn.Module:
    """Swap every BatchNorm, GroupNorm, InstanceNorm and channel LayerNorm (torchvision's
    ``LayerNorm2d``) of ``model`` for ``spec``, in place, and return the model.

    Channel counts, ``eps``, ``affine`` and BatchNorm's ``momentum`` carry over; parameters and
    statistics start fresh. Plain ``nn.LayerNorm`` (channels-last, as in transformers) is left alone.

    Raises:
        ValueError: ``spec`` cannot fit a layer (the message names the layer and the fix).
    """
    make = norm_layer(spec)
    if is_norm(model):
        return _convert(make, model, "the model")
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if is_norm(child):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, _convert(make, child, f"layer {name!r}"))
    return model


def _convert(make: Callable[..., HeterologousNorm], layer: nn.Module, where: str) -> HeterologousNorm:
    if isinstance(layer, nn.GroupNorm):
        channels, affine = layer.num_channels, layer.affine
    elif isinstance(layer, LayerNorm2d):
        channels, affine = layer.normalized_shape[0], layer.elementwise_affine
    else:
        channels, affine = layer.num_features, layer.affine
    momentum = layer.momentum if isinstance(layer, nn.modules.batchnorm._BatchNorm) else 0.1
    try:
        new = make(channels, eps=layer.eps, momentum=momentum, affine=affine)
    except ValueError as error:
        raise ValueError(f"Cannot normalize {where} ({channels} channels): {error}") from None
    reference = next(chain(layer.parameters(), layer.buffers()), None)
    if reference is not None:
        new.to(device=reference.device)
    return new
