"""Filter Response Normalization and the Thresholded Linear Unit (Singh and Krishnan, CVPR 2020).

FRN divides each sample's channel by the root mean square of its responses over the spatial
positions, without centering: ``nu2 = mean(x^2 over H,W)``, ``y = gamma * x / sqrt(nu2 + eps) + beta``.
It uses no statistics of the batch, in training or at inference. Without centering, y can sit far
from zero; TLU, ``z = max(y, tau)`` with a learned per-channel threshold ``tau``, replaces the ReLU
that follows the norm (:meth:`FilterResponseNorm.following_activation`, which fedhn's models ask for
through :func:`activation_after`).

On a map of one position (the (N, C) output of a linear layer, or 1x1 maps), ``nu2 = x^2`` and the
normalized value is about ``sign(x)``; the paper learns eps there: ``eps + |eps_l|`` with a learned
scalar ``eps_l`` (here starting at 1e-4). Every layer holds ``eps_l``, so its state dict does not
depend on the input size; on larger maps it is multiplied by 0 (it gets a zero gradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "FilterResponseNorm",
    "TLU",
    "activation_after",
    "filter_response_norm",
    "one_position",
    "thresholded_linear_unit",
]

LEARNED_EPS_INIT = 1e-4


def _check_input(module: nn.Module, channels: int, x: Tensor) -> None:
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{type(module).__name__}({channels}) expects input of shape (N, {channels}, ...), got {tuple(x.shape)}"
        )


def _per_channel(parameter: Tensor, x: Tensor) -> Tensor:
    """A (C,) parameter shaped to broadcast over (N, C, *spatial)."""
    return parameter.view((1, -1) + (1,) * (x.dim() - 2))


def one_position(x: Tensor) -> float:
    """1.0 when ``x`` (N, C, *spatial) has one position per channel (where FRN's learned eps counts), else 0.0."""
    return float(math.prod(x.shape[2:]) == 1)


def filter_response_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: Tensor) -> Tensor:
    """``weight * x / sqrt(mean(x^2 over the spatial dims) + eps) + bias`` per (sample, channel); ``eps`` is one
    value (0-d) or one per channel (C,), ``weight`` and ``bias`` (C,) or both ``None``."""
    spatial = tuple(range(2, x.dim()))
    nu2 = x.square().mean(dim=spatial, keepdim=True) if spatial else x.square()
    y = x * torch.rsqrt(nu2 + (_per_channel(eps, x) if eps.dim() else eps))
    if weight is not None:
        y = torch.addcmul(_per_channel(bias, x), y, _per_channel(weight, x))
    return y


def thresholded_linear_unit(x: Tensor, tau: Tensor) -> Tensor:
    """``max(x, tau)`` with one threshold per channel (``tau`` (C,))."""
    return torch.maximum(x, _per_channel(tau, x))


class FilterResponseNorm(nn.Module):
    """FRN of eq. (1)-(2) of the paper: ``gamma * x / sqrt(mean(x^2 over the spatial dims) + eps) + beta``.

    Args:
        num_features: number of channels C.
        eps: the fixed part of eps; on maps of one position the learned ``|eps_l|`` is added.
        affine: learn the per-channel ``weight`` (gamma) and ``bias`` (beta).

    Inputs are (N, C) or (N, C, *spatial); each (sample, channel) is normalized alone, so batch size 1
    works and the eval output is the training one. The TLU that follows is a separate module
    (:meth:`following_activation`), placed where the model would have its ReLU.
    """

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be a positive channel count, got {num_features}")
        if not eps > 0:
            raise ValueError(
                f"eps must be positive (it keeps x / sqrt(nu2 + eps) finite for zero responses), got {eps}"
            )
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.eps_l = nn.Parameter(torch.tensor(LEARNED_EPS_INIT))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, self.num_features, x)
        return filter_response_norm(x, self.weight, self.bias, self.eps + self.eps_l.abs() * one_position(x))

    def following_activation(self) -> nn.Module:
        """The activation that replaces the ReLU after this norm: a TLU over its channels."""
        return TLU(self.num_features)


class TLU(nn.Module):
    """Thresholded Linear Unit, ``max(x, tau)`` with a learned threshold ``tau`` per channel (0 at the
    start: ReLU)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.tau = nn.Parameter(torch.zeros(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, self.num_features, x)
        return thresholded_linear_unit(x, self.tau)


def activation_after(norm: nn.Module) -> nn.Module:
    """The activation a model puts after ``norm`` (and after a sum of ``norm``'s output with a
    residual): the norm's own choice when it has one (``following_activation()``, e.g. FRN's TLU),
    else ``nn.ReLU(inplace=True)``."""
    following = getattr(norm, "following_activation", None)
    return following() if callable(following) else nn.ReLU(inplace=True)
