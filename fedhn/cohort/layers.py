"""Cohort versions of the weighted layers: K convolutions (plain or scaled weight-standardized) as one grouped
convolution, K linear layers as one batched matrix product, K residual gains as one per-member scale, on the
packed layout (B, K*C, ...) of :mod:`fedhn.cohort.pack`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.cohort.members import Members, Selection, take
from fedhn.models.norm_free import ResidualGain, WSConv2d, standardize_weight

__all__ = ["CohortConv2d", "CohortLinear", "CohortResidualGain", "CohortWSConv2d", "stack_parameter"]


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
        weight = self.member_weights(members).flatten(0, 1)
        bias = None if self.bias is None else take(self.bias, members).flatten()
        groups = self.groups * self.selection.count
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def member_weights(self, members: Members) -> Tensor:
        """The selected members' convolution weights, (k, O, I/groups, kh, kw)."""
        return take(self.weight, members)


class CohortWSConv2d(CohortConv2d):
    """K :class:`~fedhn.models.norm_free.WSConv2d`: each member's weight standardized with its own gains (K, O)."""

    def __init__(self, convs: Sequence[WSConv2d], selection: Selection) -> None:
        super().__init__(convs, selection)
        if any((conv.gamma, conv.eps) != (convs[0].gamma, convs[0].eps) for conv in convs):
            raise ValueError("cannot pack WSConv2d layers of different gamma or eps")
        self.gamma, self.eps = convs[0].gamma, convs[0].eps
        self.gain = stack_parameter(convs, "gain")

    def member_weights(self, members: Members) -> Tensor:
        return standardize_weight(take(self.weight, members), take(self.gain, members), gamma=self.gamma, eps=self.eps)


class CohortResidualGain(nn.Module):
    """K :class:`~fedhn.models.norm_free.ResidualGain`: gain (K,); member k's channels scaled by its gain."""

    def __init__(self, gains: Sequence[ResidualGain], selection: Selection) -> None:
        super().__init__()
        self.selection = selection
        self.gain = stack_parameter(gains, "gain")

    def forward(self, x: Tensor) -> Tensor:
        k = self.selection.count
        gain = take(self.gain, self.selection.members).view(1, k, *[1] * (x.dim() - 1))
        return (x.view(len(x), k, -1, *x.shape[2:]) * gain).view(x.shape)


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
