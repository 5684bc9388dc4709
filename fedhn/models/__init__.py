"""Models by name, built with any norm spec: ``build_model("resnet8", norm="hn")``; FedWon's norm-free networks
with ``norm="none", conv="ws"``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from fedhn.models.cifar_resnet import CifarResNet
from fedhn.models.mlp import MLP
from fedhn.models.norm_free import WSConv2d, replace_convs
from fedhn.models.torchvision_models import build_torchvision, torchvision_names
from fedhn.norms import NormLayer, NormSpec, is_no_norm, norm_layer, replace_norms

__all__ = ["CONVS", "build_model", "model_names", "MODELS"]

CONVS: dict[str, type[nn.Conv2d]] = {"plain": nn.Conv2d, "ws": WSConv2d}
"""Convolution kinds by name: plain, or scaled weight-standardized (:class:`fedhn.models.norm_free.WSConv2d`)."""


def _resnet(widths: tuple[int, ...], blocks: tuple[int, ...]) -> Callable[..., nn.Module]:
    return lambda norm, classes, channels, size, conv, norm_free: CifarResNet(
        widths, blocks, norm, classes, channels, conv, skip_init=norm_free
    )


# name -> (builder(norm_factory, num_classes, in_channels, image_size, conv type, norm_free), description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet8": (_resnet((16, 32, 64), (1, 1, 1)), "CIFAR ResNet-8, 16/32/64 channels (trains on a CPU)"),
    "resnet20": (_resnet((16, 32, 64), (3, 3, 3)), "CIFAR ResNet-20, 16/32/64 channels"),
    "resnet10": (
        _resnet((16, 32, 64, 128), (1, 1, 1, 1)),
        "the paper's four stages down to 4x4 maps at CPU size: 16/32/64/128 channels, one block each",
    ),
    "resnet18": (_resnet((64, 128, 256, 512), (2, 2, 2, 2)), "the paper's CIFAR ResNet-18 (3x3 stem, no max-pool)"),
    "mlp": (
        lambda norm, classes, channels, size, conv, norm_free: MLP(channels * size * size, norm, classes),
        "the paper's 4-layer fully connected network, 128 units",
    ),
}


def model_names() -> list[str]:
    """fedhn's own models, then torchvision's as ``tv_<name>``."""
    return list(MODELS) + [f"tv_{name}" for name in torchvision_names()]


def build_model(
    name: str,
    num_classes: int = 10,
    norm: NormLayer = "bn",
    in_channels: int = 3,
    image_size: int = 32,
    conv: str = "plain",
) -> nn.Module:
    """Build model ``name`` with every norm layer given by ``norm``: a spec (``"hn"``), ``"none"`` (no
    normalization), or a callable ``num_features -> nn.Module`` such as ``nn.BatchNorm2d`` or
    ``functools.partial(nn.GroupNorm, 8)``; and convolutions of kind ``conv`` (:data:`CONVS`: ``"plain"``, or
    ``"ws"`` for scaled weight standardization). The CIFAR ResNets without a norm get a SkipInit gain on every
    residual branch (:mod:`fedhn.models.norm_free`), so that they train.

    ``name`` is one of fedhn's models (``resnet8``, ``resnet20``, ``resnet10``, ``resnet18``, ``mlp``) or a
    torchvision classification model, as ``tv_<name>`` or by its plain name when fedhn has no model
    of that name (``mobilenet_v2``, ``densenet121``, ...). torchvision models get a stem for small
    images (see :func:`build_torchvision`). ``image_size`` (square side) matters for ``mlp`` only.

    Raises:
        ValueError: unknown model or conv, ``conv="ws"`` for the mlp (it has no convolutions), or a norm that
            does not fit one of its layers.
    """
    key = name.strip().lower()
    if conv not in CONVS:
        raise ValueError(f"Unknown conv {conv!r}: use one of {', '.join(CONVS)}")
    if key == "mlp" and conv != "plain":
        raise ValueError(f"conv = {conv!r} changes convolutions, and the mlp has none; use conv = 'plain' with it")
    try:
        if key in MODELS:
            return MODELS[key][0](norm_layer(norm), num_classes, in_channels, image_size, CONVS[conv], is_no_norm(norm))
        tv_name = key.removeprefix("tv_")
        if tv_name in torchvision_names():
            model = replace_norms(build_torchvision(tv_name, num_classes, in_channels), norm)
            return replace_convs(model) if conv == "ws" else model
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
