"""SGD over stacked parameters: ``torch.optim.SGD``'s update (no dampening, no Nesterov) for each
member with its own learning rate, stepping only the members that trained this step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedhn.cohort.members import is_all, take

__all__ = ["StackedSGD"]


class StackedSGD:
    """SGD with momentum and weight decay on (K, ...) parameters, member k at ``lrs[k]``.

    The momentum buffers start at zero, so a member's first update sets its buffer to its gradient
    (with weight decay), as ``torch.optim.SGD`` does; members outside a step keep weights and buffers.
    A step makes three passes over the stacked tensors: ``d = g + wd * p``, ``d += momentum * buffer``
    (the new buffer), ``p += d * (-lr)``.
    """

    def __init__(self, params: Sequence[Tensor], lrs: Tensor, momentum: float, weight_decay: float) -> None:
        self.params = list(params)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.negative_lrs = [-lrs.to(p).view(-1, *[1] * (p.dim() - 1)) for p in self.params]
        self.buffers = [torch.zeros_like(p) for p in self.params] if momentum else []

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], members: Sequence[slice]) -> None:
        """Update the members of ``members`` (slices) with their rows of ``grads``, which this step owns
        and overwrites (with all members, the gradients become the momentum buffers)."""
        for run in members:
            params = [take(p, run) for p in self.params]
            steps = [take(g, run) for g in grads]
            if self.weight_decay:
                torch._foreach_add_(steps, params, alpha=self.weight_decay)
            if self.momentum:
                buffers = [take(b, run) for b in self.buffers]
                torch._foreach_add_(steps, buffers, alpha=self.momentum)
                if is_all(run, len(self.params[0])):
                    self.buffers = list(steps)
                else:
                    torch._foreach_copy_(buffers, steps)
            torch._foreach_addcmul_(params, steps, [take(lr, run) for lr in self.negative_lrs])
