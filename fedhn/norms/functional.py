"""Statistics math of the normalization family, as pure functions on tensors.

Feature maps are viewed as ``x3`` of shape (N, C, S), S the number of spatial positions (1 for
fully connected features). Statistics of a set with G channel groups have shape (N, G) for
per-sample sets and (1, G) for sets pooled over the batch.

Every set is computed from one reduction over the input: the per-(sample, channel) moments when a
per-sample set is involved, else the per-channel moments. Coarser sets follow exactly because all
cells hold the same number of pixels: the pooled mean is the mean of the cell means and the pooled
variance is ``mean(var_i + (mean_i - mean)^2)`` (numerically stable, no E[x^2] - E[x]^2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fedhn.norms.pixel_sets import PixelSet

__all__ = [
    "set_moments",
    "pool_moments",
    "expand_groups",
    "set_size",
    "unbiased",
    "mix",
    "affine_coefficients",
    "normalize",
]


def pool_moments(means: Tensor, variances: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of the union of equally sized cells, reduced over ``dims``."""
    mean = means.mean(dims, keepdim=True)
    var = (variances + (means - mean).square()).mean(dims, keepdim=True)
    return mean, var


def set_moments(x3: Tensor, sets: Iterable[PixelSet]) -> dict[PixelSet, tuple[Tensor, Tensor]]:
    """Mean and biased variance of every set (resolved: ``groups`` is ``None`` or divides C).

    Returns a dict from set to ``(mean, var)``, each of shape (N, G) or (1, G).
    """
    sets = list(dict.fromkeys(sets))
    n, c, _ = x3.shape
    per_sample = any(not s.over_batch for s in sets)
    var, mean = torch.var_mean(x3, dim=2 if per_sample else (0, 2), unbiased=False)
    if not per_sample:
        var, mean = var.unsqueeze(0), mean.unsqueeze(0)
    moments = {}
    for s in sets:
        groups = s.groups or c
        dims = tuple(d for d, size in ((0, n if per_sample and s.over_batch else 1), (2, c // groups)) if size > 1)
        if not dims:
            moments[s] = (mean, var)
            continue
        m, v = pool_moments(mean.view(-1, groups, c // groups), var.view(-1, groups, c // groups), dims)
        moments[s] = (m.view(m.shape[0], groups), v.view(v.shape[0], groups))
    return moments


def unbiased(variance: Tensor, count: float) -> Tensor:
    """The unbiased variance of ``count`` values from their biased ``variance`` (Bessel's correction, as
    BatchNorm stores its running variance; the fused kernel applies the same factor in C)."""
    return variance * (count / (count - 1))


def set_size(s: PixelSet, shape: Sequence[int]) -> int:
    """Number of pixels in one cell of ``s`` for an input of ``shape`` (N, C, *spatial)."""
    n, c = shape[0], shape[1]
    spatial = 1
    for size in shape[2:]:
        spatial *= size
    return (n if s.over_batch else 1) * (c // (s.groups or c)) * spatial


def expand_groups(stat: Tensor, channels: int) -> Tensor:
    """Repeat group statistics (B, G) to channel statistics (B, C)."""
    groups = stat.shape[1]
    if groups == channels:
        return stat
    return stat.repeat_interleave(channels // groups, dim=1)


def mix(stats: Sequence[Tensor], logits: Tensor | None) -> Tensor:
    """Combine per-set statistics (broadcastable (B, C) tensors) with softmax weights of ``logits``."""
    if logits is None:
        return stats[0]
    weights = torch.softmax(logits, dim=0)
    return sum(w * s for w, s in zip(weights, stats, strict=True))


def affine_coefficients(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """``scale, shift`` such that eq. (1)-(2) is ``x * scale + shift``, for statistics of any shape
    that broadcasts with ``weight`` and ``bias``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def normalize(x3: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Eq. (1)-(2): ``(x - mean) / sqrt(var + eps) * weight + bias`` with (B, C) statistics.

    Written as ``x * scale + shift`` per (sample, channel), the form of PyTorch's own CPU kernels.
    """
    scale, shift = affine_coefficients(mean, var, weight, bias, eps)
    return torch.addcmul(shift.unsqueeze(-1), x3, scale.unsqueeze(-1))
