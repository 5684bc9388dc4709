"""Layers of norm-free networks (FedWon, Zhuang and Lyu, ICLR 2024, after Brock et al.'s NF-ResNets).

- :class:`WSConv2d`: scaled weight standardization (Qiao et al. 2019; Brock et al. 2021):
  ``W_hat = gain * (W - mean) / sqrt(max(var * fan_in, eps))`` per output channel, mean and biased variance
  over the channel's ``fan_in = in/groups * kh * kw`` weights, ``gain`` learnable (ones at init).
- :class:`ResidualGain`: SkipInit (De and Smith 2020, the ``skipinit`` gain of NF-ResNets): a learnable scalar,
  zero at init, on each residual branch, so that a deep norm-free ResNet starts as its skip path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ResidualGain", "WSConv2d", "replace_convs", "standardize_weight"]

WS_EPS = 1e-4  # NF-ResNets' eps of the scaled variance


def standardize_weight(weight: Tensor, gain: Tensor, eps: float = WS_EPS) -> Tensor:
    """Scaled weight standardization of conv weights ``(..., O, I, kh, kw)`` with gains ``(..., O)``: each output
    channel's weights minus their mean, times ``gain * rsqrt(max(var * fan_in, eps))``."""
    dims = (-3, -2, -1)
    fan_in = weight.shape[-3] * weight.shape[-2] * weight.shape[-1]
    var, mean = torch.var_mean(weight, dims, unbiased=False, keepdim=True)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps)) * gain[..., None, None, None]
    return (weight - mean) * scale


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is scaled-standardized at every forward (:func:`standardize_weight`), with a
    learnable per-output-channel ``gain``."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(self.out_channels))

    def standardized_weight(self) -> Tensor:
        """The weight the convolution applies."""
        return standardize_weight(self.weight, self.gain, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    @torch.no_grad()
    def plain(self) -> nn.Conv2d:
        """The ``nn.Conv2d`` that computes the same (weight standardized once, in float64)."""
        conv = _like(self, bias=self.bias is not None).to(self.weight.device, self.weight.dtype)
        conv.weight.copy_(standardize_weight(self.weight.double(), self.gain.double(), self.eps))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"


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
