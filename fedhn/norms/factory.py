"""Build norm layers from specs (or take the user's own norm), and swap the norm layers of any model."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from itertools import chain

from torch import nn

from fedhn.norms.batch_renorm import BatchRenorm
from fedhn.norms.frn import FilterResponseNorm
from fedhn.norms.layers import HeterologousNorm
from fedhn.norms.spec import NormSpec, parse_spec

__all__ = [
    "LAYER_CLASSES",
    "NO_NORM",
    "NormLayer",
    "norm_layer",
    "replace_norms",
    "is_no_norm",
    "is_norm",
    "NORM_TYPES",
]

NormLayer = str | NormSpec | Callable[..., nn.Module]
"""A norm: a spec (``"hn"``, ``"mean=bn,std=bn+en"``, a :class:`NormSpec`), :data:`NO_NORM`, or a callable
``num_features -> nn.Module`` such as a class (``nn.BatchNorm2d``) or a ``functools.partial``
(``partial(nn.GroupNorm, 8)``)."""

NO_NORM = "none"
"""The norm spec of no normalization (FedWon): every norm layer is ``nn.Identity``."""


def is_no_norm(spec: NormLayer) -> bool:
    """Whether ``spec`` is :data:`NO_NORM`."""
    return isinstance(spec, str) and spec.strip().lower() == NO_NORM


def _identity(num_features: int, **settings) -> nn.Module:
    """No normalization for ``num_features`` channels (``settings`` such as eps do not apply)."""
    return nn.Identity()


NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    HeterologousNorm,
    FilterResponseNorm,
)
"""The norm classes :func:`is_norm` knows without importing torchvision; it also knows torchvision's
``LayerNorm2d`` (channel LayerNorm, as in ConvNeXt) once torchvision is imported. :class:`BatchRenorm` is a
``_BatchNorm``."""

LAYER_CLASSES: dict[str, type[nn.Module]] = {"frn": FilterResponseNorm, "brn": BatchRenorm}
"""The layer class of each :data:`~fedhn.norms.spec.LAYER_PRESETS` name."""


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalizes over channels (the layers :func:`replace_norms` swaps)."""
    return isinstance(module, NORM_TYPES) or _is_layer_norm_2d(module)


def _is_layer_norm_2d(module: nn.Module) -> bool:
    """Whether ``module`` is torchvision's ``LayerNorm2d``; a model that has one has imported torchvision, so it is
    looked up in ``sys.modules`` (``fedhn.norms`` does not import torchvision)."""
    convnext = sys.modules.get("torchvision.models.convnext")
    return convnext is not None and isinstance(module, convnext.LayerNorm2d)


def norm_layer(spec: NormLayer, **kwargs) -> Callable[..., nn.Module]:
    """A factory ``num_features -> nn.Module`` for ``spec`` (usable as torchvision's or timm's ``norm_layer``);
    ``nn.Identity`` for :data:`NO_NORM`.

    A spec string or :class:`NormSpec` gives :class:`HeterologousNorm` layers, ``"frn"`` and ``"brn"`` their own
    classes (:data:`LAYER_CLASSES`); the spec is parsed now, so a bad spec fails here; group counts are checked
    per layer. A callable (a norm class, a ``functools.partial``, any
    ``num_features -> nn.Module``) is used as it is. ``kwargs`` (e.g. eps, momentum, affine) go to every layer.
    """
    if callable(spec):
        return functools.partial(spec, **kwargs) if kwargs else spec
    if is_no_norm(spec):
        return _identity
    if isinstance(spec, str) and spec.strip().lower() in LAYER_CLASSES:
        return functools.partial(LAYER_CLASSES[spec.strip().lower()], **kwargs)
    parsed = parse_spec(spec)
    return functools.partial(
        HeterologousNorm, mean="+".join(map(str, parsed.mean)), std="+".join(map(str, parsed.std)), **kwargs
    )


def replace_norms(model: nn.Module, spec: NormLayer) -> nn.Module:
    """Swap every BatchNorm, GroupNorm, InstanceNorm and channel LayerNorm (torchvision's
    ``LayerNorm2d``) of ``model`` for ``spec``, in place, and return the model.

    For a spec, channel counts, ``eps``, ``affine`` and BatchNorm's ``momentum`` (where the new layer takes one:
    ``frn`` has none) carry over; parameters and
    statistics start fresh. A callable ``spec`` is called with the channel count only (bind its other
    settings with ``functools.partial``). Plain ``nn.LayerNorm`` (channels-last, as in transformers) is left alone.

    Raises:
        ValueError: ``spec`` cannot fit a layer (the message names the layer and the fix).
    """
    make = norm_layer(spec)
    settings = not callable(spec)
    if is_norm(model):
        return _convert(make, model, "the model", settings)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if is_norm(child):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, _convert(make, child, f"layer {name!r}", settings))
    return model


def _convert(make: Callable[..., nn.Module], layer: nn.Module, where: str, settings: bool) -> nn.Module:
    """``make``'s layer for the channels of ``layer``, given ``layer``'s eps, momentum and affine if ``settings``."""
    if isinstance(layer, nn.GroupNorm):
        channels, affine = layer.num_channels, layer.affine
    elif _is_layer_norm_2d(layer):
        channels, affine = layer.normalized_shape[0], layer.elementwise_affine
    else:
        channels, affine = layer.num_features, layer.affine
    momentum = layer.momentum if isinstance(layer, nn.modules.batchnorm._BatchNorm) else 0.1
    kwargs = {"eps": layer.eps, "momentum": momentum, "affine": affine} if settings else {}
    accepted = inspect.signature(make).parameters
    kwargs = {key: value for key, value in kwargs.items() if key in accepted}
    try:
        new = make(channels, **kwargs)
    except ValueError as error:
        raise ValueError(f"Cannot normalize {where} ({channels} channels): {error}") from None
    reference = next(chain(layer.parameters(), layer.buffers()), None)
    if reference is not None:
        new.to(device=reference.device)
    return new
