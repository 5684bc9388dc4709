"""Cohort versions of the weighted layers: K convolutions as one grouped convolution, K linear
layers as one batched matrix product, on the packed layout (B, K*C, ...) of :mod:`fedhn.cohort.pack`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.cohort.members import Selection, take

__all__ = ["CohortConv2d", "CohortLinear", "stack_parameter"]


def stack_parameter(modules: Sequence[nn.Module], name: str) -> nn.Parameter | None:
    """The members' parameter ``name`` stacked along a new dim 0 (``None`` where the layer has none)."""
    values = [getattr(module, name) for module in modules]
    if values[0] is None:
        return None
    return nn.Parameter(torch.stack([value.detach() for value in values]))


class CohortConv2d(nn.Module):
    """K ``nn.Conv2d`` of one shape: weight (K, O, I/groups, kh, kw), bias (K, O); the forward is a
    convolution with ``groups * k`` groups on (B, k*I, H, W) for the k selected members."""

    def __init__(self, convs: Sequence[nn.Conv2d], selection: Selection) -> None:
        super().__init__()
        reference = convs[0]
        if reference.padding_mode != "zeros":
            raise ValueError(f"cannot pack Conv2d with padding_mode={reference.padding_mode!r} (only 'zeros')")
        self.selection = selection
        self.stride, self.padding, self.dilation = reference.stride, reference.padding, reference.dilation
        self.groups = reference.groups
        self.weight = stack_parameter(convs, "weight")
        self.register_parameter("bias", stack_parameter(convs, "bias"))

    def forward(self, x: Tensor) -> Tensor:
        members = self.selection.members
        weight = take(self.weight, members).flatten(0, 1)
        bias = None if self.bias is None else take(self.bias, members).flatten()
        groups = self.groups * self.selection.count
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class CohortLinear(nn.Module):
    """K ``nn.Linear`` of one shape: weight (K, O, I), bias (K, O); the forward maps (B, k*I) to
    (B, k*O) with one batched matrix product over the k selected members."""

    def __init__(self, linears: Sequence[nn.Linear], selection: Selection) -> None:
        super().__init__()
        self.selection = selection
        self.weight = stack_parameter(linears, "weight")
        self.register_parameter("bias", stack_parameter(linears, "bias"))

    def forward(self, x: Tensor) -> Tensor:
        members = self.selection.members
        weight = take(self.weight, members)
        k, out_features, in_features = weight.shape
        if x.dim() != 2 or x.shape[1] != k * in_features:
            raise ValueError(
                f"a cohort Linear of {k} x {in_features} inputs expects (B, {k * in_features}), got {tuple(x.shape)}"
            )
        inputs = x.view(len(x), k, in_features).transpose(0, 1)
        if self.bias is None:
            out = torch.bmm(inputs, weight.transpose(1, 2))
        else:
            out = torch.baddbmm(take(self.bias, members).unsqueeze(1), inputs, weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(len(x), k * out_features)
