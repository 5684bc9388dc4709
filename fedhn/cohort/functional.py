"""The vmap fallback for models :func:`fedhn.cohort.pack` cannot map (e.g. torchvision models).

The members' tensors are stacked with ``torch.func.stack_module_state``; a step runs
``vmap(grad_and_value(loss))`` of ``functional_call`` over the members, with each member's buffers
batched so that its running statistics advance alone. HN's fused kernel runs under vmap through the
vmap rules of its operators (:mod:`fedhn.norms.fused`). ``momentum=None`` norms (a cumulative
average) do not run under vmap.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from fedhn.cohort.members import put_, take
from fedhn.cohort.protocol import Group

__all__ = ["FunctionalCohort"]


def _loss(
    template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor, labels: Tensor
) -> Tensor:
    """One member's mean cross-entropy on its batch, with its parameters and buffers."""
    return F.cross_entropy(functional_call(template, (params, buffers), (images,)), labels)


class FunctionalCohort:
    """K models of one architecture trained through ``torch.func`` (the :class:`~fedhn.cohort.Packed`
    interface of :func:`fedhn.cohort.train_packed` and :func:`fedhn.cohort.unpack`)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        params, self.buffers = stack_module_state(list(models))
        self.params = {name: value.detach() for name, value in params.items()}
        self.keys = list(models[0].state_dict())
        self.size = len(models)
        self.template = copy.deepcopy(models[0]).to("meta")
        self._step = vmap(grad_and_value(functools.partial(_loss, self.template)))

    def train(self, mode: bool = True) -> FunctionalCohort:
        """Put the members in training (or eval) mode."""
        self.template.train(mode)
        return self

    def stacked_parameters(self) -> list[Tensor]:
        """The trainable tensors, each (K, ...)."""
        return list(self.params.values())

    def gradients(self, groups: Sequence[Group]) -> tuple[list[Tensor], list[Tensor]]:
        """One vmapped gradient per group, written into full (K, ...) gradients."""
        grads = {name: torch.zeros_like(value) for name, value in self.params.items()}
        losses = []
        for group in groups:
            params = {name: take(value, group.members) for name, value in self.params.items()}
            buffers = {name: take(value, group.members) for name, value in self.buffers.items()}
            grad, loss = self._step(params, buffers, torch.stack(list(group.images)), torch.stack(list(group.labels)))
            for name, value in grad.items():
                grads[name][group.members] = value
            for name, rows in buffers.items():
                put_(self.buffers[name], group.members, rows)
            losses.append(loss)
        return list(grads.values()), losses

    @torch.no_grad()
    def reorder_(self, order: Tensor) -> None:
        """Permute the members in place: member i becomes the old member ``order[i]``."""
        for tensor in (*self.params.values(), *self.buffers.values()):
            tensor.copy_(tensor.index_select(0, order.to(tensor.device)))

    def stacked_state(self) -> dict[str, Tensor]:
        """Every member's state-dict entries stacked over members, in the models' state-dict order."""
        stacked = {**self.params, **self.buffers}
        return {key: stacked[key] for key in self.keys}
