"""Adaptive gradient clipping (AGC; Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization"), as FedWon uses it: each unit's gradient is rescaled so that ``||G_i|| / max(||W_i||, eps)``
is at most ``clip``.

Units: the rows of a weight (an output channel of a convolution, an output feature of a linear layer: the
norm over all other dims); a vector or scalar parameter (biases, gains) is one unit, as in NF-ResNets. The
classifier (the model's last ``nn.Linear``) is not clipped. Stacked tensors of a packed cohort (member dim 0)
are clipped per member.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AdaptiveClipping", "classifier_name", "unit_norms", "adaptive_clip_"]

AGC_EPS = 1e-3  # NF-ResNets' floor of the weight norm
_GRAD_FLOOR = 1e-6


def unit_norms(tensor: Tensor, stacked: bool = False) -> Tensor:
    """Each unit's Frobenius norm, broadcastable to ``tensor`` (dim 0 are members when ``stacked``)."""
    lead = int(stacked)
    unit_dims = 1 if tensor.dim() - lead > 1 else 0
    dims = tuple(range(lead + unit_dims, tensor.dim()))
    if not dims:
        return tensor.abs()
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True)


@torch.no_grad()
def adaptive_clip_(
    params: Sequence[Tensor], grads: Sequence[Tensor], clip: float, stacked: bool = False, eps: float = AGC_EPS
) -> None:
    """Clip ``grads`` in place: a unit whose ``||G|| > clip * max(||W||, eps)`` gets ``G * clip * max(||W||, eps)
    / ||G||``; the others stay."""
    for param, grad in zip(params, grads, strict=True):
        limit = unit_norms(param, stacked).clamp(min=eps) * clip
        norm = unit_norms(grad, stacked)
        grad.mul_(torch.where(norm > limit, limit / norm.clamp(min=_GRAD_FLOOR), torch.ones_like(norm)))


def classifier_name(model: nn.Module) -> str:
    """The name of ``model``'s classifier: its last ``nn.Linear`` in module order.

    Raises:
        ValueError: the model has no ``nn.Linear``.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("adaptive gradient clipping spares the classifier, the last nn.Linear, and the model has none")
    return names[-1]


class AdaptiveClipping:
    """AGC at ``clip`` for the parameters of models like ``model``, in ``model.parameters()`` order, sparing the
    classifier's."""

    def __init__(self, model: nn.Module, clip: float) -> None:
        prefix = classifier_name(model) + "."
        self.clip = clip
        self.clipped = [not name.startswith(prefix) for name, _ in model.named_parameters()]

    def __call__(self, params: Sequence[Tensor], grads: Sequence[Tensor | None], stacked: bool = False) -> None:
        """Clip ``grads`` (of ``params``; ``None`` for a parameter without gradient, each stacked over members when ``stacked``) in place."""
        if len(params) != len(self.clipped):
            raise ValueError(f"{len(params)} parameters, but the model has {len(self.clipped)}")
        chosen = [
            (p, g) for p, g, clipped in zip(params, grads, self.clipped, strict=True) if clipped and g is not None
        ]
        adaptive_clip_([p for p, _ in chosen], [g for _, g in chosen], self.clip, stacked)
