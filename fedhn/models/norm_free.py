"""Layers of norm-free networks (FedWon, Zhuang and Lyu, ICLR 2024, after Brock et al.'s NF-ResNets).

- :class:`WSConv2d`: scaled weight standardization (Qiao et al. 2019; Brock et al. 2021):
  ``W_hat = gamma * gain * (W - mean) / sqrt(max(var * fan_in, eps))`` per output channel, mean and biased
  variance over the channel's ``fan_in = in/groups * kh * kw`` weights, ``gain`` learnable (ones at init) and
  ``gamma`` the fixed constant of the ReLU the convolution follows (:data:`RELU_GAMMA`), which keeps the
  activations' variance from halving at every ReLU.
- :class:`ResidualGain`: SkipInit (De and Smith 2020, the ``skipinit`` gain of NF-ResNets): a learnable scalar,
  zero at init, on each residual branch, so that a deep norm-free ResNet starts as its skip path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RELU_GAMMA", "ResidualGain", "WSConv2d", "replace_convs", "standardize_weight"]

WS_EPS = 1e-4  # NF-ResNets' eps of the scaled variance
RELU_GAMMA = math.sqrt(2 / (1 - 1 / math.pi))
"""NF-ResNets' gamma for ReLU: ``1 / std(relu(z))`` for ``z ~ N(0, 1)`` (about 1.7139)."""


def standardize_weight(weight: Tensor, gain: Tensor, *, gamma: float, eps: float = WS_EPS) -> Tensor:
    """Scaled weight standardization of conv weights ``(..., O, I, kh, kw)`` with gains ``(..., O)``: each output
    channel's weights minus their mean, times ``gamma * gain * rsqrt(max(var * fan_in, eps))``."""
    dims = (-3, -2, -1)
    fan_in = weight.shape[-3] * weight.shape[-2] * weight.shape[-1]
    var, mean = torch.var_mean(weight, dims, unbiased=False, keepdim=True)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps)) * (gamma * gain[..., None, None, None])
    return (weight - mean) * scale


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is scaled-standardized at every forward (:func:`standardize_weight`), with a
    learnable per-output-channel ``gain`` and the fixed ``gamma`` of the nonlinearity it follows (ReLU's by
    default; 1 gives plain scaled WS)."""

    def __init__(self, *args, gamma: float = RELU_GAMMA, eps: float = WS_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(self.out_channels))

    def standardized_weight(self) -> Tensor:
        """The weight the convolution applies."""
        return standardize_weight(self.weight, self.gain, gamma=self.gamma, eps=self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    @torch.no_grad()
    def plain(self) -> nn.Conv2d:
        """The ``nn.Conv2d`` that computes the same (weight standardized once, in float64)."""
        conv = _like(self, bias=self.bias is not None).to(self.weight.device, self.weight.dtype)
        conv.weight.copy_(standardize_weight(self.weight.double(), self.gain.double(), gamma=self.gamma, eps=self.eps))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma:.4f}, eps={self.eps}"


class ResidualGain(nn.Module):
    """``x * gain``, a learnable scalar starting at 0 (SkipInit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


def replace_convs(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Conv2d`` of ``model`` for a :class:`WSConv2d` of the same shape (fresh weights,
    a bias as the original), in place; return the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, _like(child, bias=child.bias is not None, kind=WSConv2d).to(child.weight.device))
    return model


def _like(conv: nn.Conv2d, bias: bool, kind: type[nn.Conv2d] = nn.Conv2d) -> nn.Conv2d:
    return kind(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=bias,
        padding_mode=conv.padding_mode,
    )
