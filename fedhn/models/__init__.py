"""Models by name, built with any norm spec: ``build_model("resnet8", norm="hn")``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from fedhn.models.cifar_resnet import CifarResNet
from fedhn.models.mlp import MLP
from fedhn.models.torchvision_models import build_torchvision, torchvision_names
from fedhn.norms import NormLayer, NormSpec, norm_layer, replace_norms

__all__ = ["build_model", "model_names", "MODELS"]

# name -> (builder(norm_factory, num_classes, in_channels, image_size), description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet8": (
        lambda norm, classes, channels, size: CifarResNet((16, 32, 64), (1, 1, 1), norm, classes, channels),
        "CIFAR ResNet-8, 16/32/64 channels (trains on a CPU)",
    ),
    "resnet20": (
        lambda norm, classes, channels, size: CifarResNet((16, 32, 64), (3, 3, 3), norm, classes, channels),
        "CIFAR ResNet-20, 16/32/64 channels",
    ),
    "resnet10": (
        lambda norm, classes, channels, size: CifarResNet((16, 32, 64, 128), (1, 1, 1, 1), norm, classes, channels),
        "the paper's four stages down to 4x4 maps at CPU size: 16/32/64/128 channels, one block each",
    ),
    "resnet18": (
        lambda norm, classes, channels, size: CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), norm, classes, channels),
        "the paper's CIFAR ResNet-18 (3x3 stem, no max-pool)",
    ),
    "mlp": (
        lambda norm, classes, channels, size: MLP(channels * size * size, norm, classes),
        "the paper's 4-layer fully connected network, 128 units",
    ),
}


def model_names() -> list[str]:
    """fedhn's own models, then torchvision's as ``tv_<name>``."""
    return list(MODELS) + [f"tv_{name}" for name in torchvision_names()]


def build_model(
    name: str, num_classes: int = 10, norm: NormLayer = "bn", in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """Build model ``name`` with every norm layer given by ``norm``: a spec (``"hn"``), or a callable
    ``num_features -> nn.Module`` such as ``nn.BatchNorm2d`` or ``functools.partial(nn.GroupNorm, 8)``.

    ``name`` is one of fedhn's models (``resnet8``, ``resnet20``, ``resnet10``, ``resnet18``, ``mlp``) or a
    torchvision classification model, as ``tv_<name>`` or by its plain name when fedhn has no model
    of that name (``mobilenet_v2``, ``densenet121``, ...). torchvision models get a stem for small
    images (see :func:`build_torchvision`). ``image_size`` (square side) matters for ``mlp`` only.

    Raises:
        ValueError: unknown model, or a norm that does not fit one of its layers.
    """
    key = name.strip().lower()
    try:
        if key in MODELS:
            return MODELS[key][0](norm_layer(norm), num_classes, in_channels, image_size)
        tv_name = key.removeprefix("tv_")
        if tv_name in torchvision_names():
            return replace_norms(build_torchvision(tv_name, num_classes, in_channels), norm)
    except ValueError as error:
        raise ValueError(f"Cannot build {name} with norm {_norm_name(norm)!r}: {error}") from None
    hint = difflib.get_close_matches(key, model_names(), n=3)
    suggestion = f" Did you mean {', '.join(hint)}?" if hint else ""
    raise ValueError(
        f"Unknown model {name!r}. fedhn models: {', '.join(MODELS)}; torchvision models as tv_<name> "
        f"(e.g. tv_resnet18, mobilenet_v2, shufflenet_v2_x1_5, densenet121).{suggestion}"
    )


def _norm_name(norm: NormLayer) -> str:
    """The spec, or the name of the norm callable (of the function a ``functools.partial`` wraps)."""
    if isinstance(norm, str | NormSpec):
        return str(norm)
    return getattr(getattr(norm, "func", norm), "__name__", repr(norm))
