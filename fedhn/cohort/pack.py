"""The cohort transform: K models of one architecture as one model with K-times-wider grouped layers.

Layout: member k's channels (features) of every activation are k*C..(k+1)*C, so the input of a
cohort of k selected members is (B, k*C, H, W), :func:`pack_inputs` of the members' (B, C, H, W)
batches, and the output is each member's logits (k, B, classes). Convolutions become grouped
convolutions, linear layers batched matrix products, norm layers :class:`CohortNorm`; layers that act
per channel (ReLU, pooling, flattening from dim 1) and containers whose forward only chains their
children are kept. :data:`CONVERTERS` maps each module type to its converter; a model with another
type does not pack (use :class:`fedhn.cohort.FunctionalCohort`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.cohort.baseline_norms import CohortBatchRenorm, CohortFilterResponseNorm, CohortTLU
from fedhn.cohort.layers import CohortConv2d, CohortLinear, CohortResidualGain, CohortWSConv2d
from fedhn.cohort.members import Members, Selection
from fedhn.cohort.norm import CohortNorm
from fedhn.cohort.protocol import Group, Packed
from fedhn.models.cifar_resnet import BasicBlock, CifarResNet
from fedhn.models.mlp import MLP
from fedhn.models.norm_free import ResidualGain, WSConv2d
from fedhn.norms import TLU, BatchRenorm, FilterResponseNorm, HeterologousNorm

__all__ = ["CONVERTERS", "Cohort", "pack", "pack_inputs", "unpack"]

# (the K models' modules at one place, the cohort's selection, the place's name) -> the cohort module
Converter = Callable[[Sequence[nn.Module], Selection, str], nn.Module]


def _layer(cohort_type: Callable[[Sequence[nn.Module], Selection], nn.Module]) -> Converter:
    """The converter that builds ``cohort_type(modules, selection)``."""
    return lambda modules, selection, path: cohort_type(modules, selection)


def _kept(modules: Sequence[nn.Module], selection: Selection, path: str) -> nn.Module:
    """A stateless layer that acts on each channel (or sample) alone: the same layer."""
    return copy.deepcopy(modules[0])


def _flatten(modules: Sequence[nn.Flatten], selection: Selection, path: str) -> nn.Module:
    """Flattening (B, k*C, H, W) from dim 1 keeps each member's features together: the same layer."""
    if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
        raise ValueError(f"cannot pack {modules[0]}: only Flatten(start_dim=1, end_dim=-1) keeps the members apart")
    return _kept(modules, selection, path)


def _container(modules: Sequence[nn.Module], selection: Selection, path: str) -> nn.Module:
    """A module whose forward only chains its children: a copy with the children converted."""
    shell = copy.copy(modules[0])
    if shell._parameters or shell._buffers:
        raise ValueError(f"cannot pack {type(shell).__qualname__}: it holds parameters or buffers of its own")
    shell._modules = {
        name: _convert([module._modules[name] for module in modules], selection, f"{path}.{name}")
        for name in modules[0]._modules
    }
    return shell


CONVERTERS: dict[type[nn.Module], Converter] = {
    nn.Conv2d: _layer(CohortConv2d),
    WSConv2d: _layer(CohortWSConv2d),
    ResidualGain: _layer(CohortResidualGain),
    nn.Linear: _layer(CohortLinear),
    HeterologousNorm: _layer(CohortNorm),
    FilterResponseNorm: _layer(CohortFilterResponseNorm),
    TLU: _layer(CohortTLU),
    BatchRenorm: _layer(CohortBatchRenorm),
    nn.ReLU: _kept,
    nn.Identity: _kept,
    nn.AdaptiveAvgPool2d: _kept,
    nn.Flatten: _flatten,
    nn.Sequential: _container,
    BasicBlock: _container,
    CifarResNet: _container,
    MLP: _container,
}


def _convert(modules: Sequence[nn.Module], selection: Selection, path: str) -> nn.Module:
    kind = type(modules[0])
    if any(type(module) is not kind for module in modules):
        raise ValueError(f"cannot pack {path}: the models hold different module types there")
    converter = CONVERTERS.get(kind)
    if converter is None:
        raise TypeError(
            f"cannot pack {path}: no cohort converter for {kind.__module__}.{kind.__qualname__}; "
            "add one to fedhn.cohort.CONVERTERS or train these models with fedhn.cohort.FunctionalCohort"
        )
    try:
        return converter(modules, selection, path)
    except ValueError as error:
        raise ValueError(f"cannot pack {path}: {error}") from None


class Cohort(nn.Module):
    """K packed models (see the module docstring); ``body`` has the models' module names, with every
    parameter and buffer stacked over members."""

    def __init__(self, body: nn.Module, selection: Selection) -> None:
        super().__init__()
        self.body = body
        self.selection = selection
        self.size = selection.size

    def forward(self, x: Tensor, members: Members = slice(None)) -> Tensor:
        """Logits (k, B, classes) of the k ``members`` for the packed input ``x`` (B, k*C, ...)."""
        self.selection.members = members
        try:
            k = self.selection.count
            out = self.body(x)
        finally:
            self.selection.members = slice(None)
        return out.view(len(x), k, -1).transpose(0, 1)

    def stacked_parameters(self) -> list[Tensor]:
        """The trainable tensors, each (K, ...)."""
        return list(self.parameters())

    def gradients(self, groups: Sequence[Group]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-member gradients through one backward of the sum of every member's mean loss: member k's
        share of the sum depends on its own weights only, so its gradient is its own loss's."""
        losses = [self._losses(group) for group in groups]
        params = self.stacked_parameters()
        grads = torch.autograd.grad(sum(loss.sum() for loss in losses), params)
        return list(grads), [loss.detach() for loss in losses]

    def _losses(self, group: Group) -> Tensor:
        logits = self(pack_inputs(group.images), group.members).transpose(0, 1)  # (B, k, classes)
        batch, k, classes = logits.shape
        labels = torch.stack(list(group.labels), 1).reshape(-1)
        return F.cross_entropy(logits.reshape(-1, classes), labels, reduction="none").view(batch, k).mean(0)

    @torch.no_grad()
    def reorder_(self, order: Tensor) -> None:
        """Permute the members in place: member i becomes the old member ``order[i]``."""
        for tensor in (*self.parameters(), *self.buffers()):
            tensor.copy_(tensor.index_select(0, order.to(tensor.device)))

    def stacked_state(self) -> dict[str, Tensor]:
        """Every member's state-dict entries stacked over members, in the models' state-dict order."""
        return self.body.state_dict()


def pack_inputs(images: Sequence[Tensor]) -> Tensor:
    """The members' batches (each (B, C, ...)) in the packed layout (B, k*C, ...)."""
    return torch.stack(list(images), 1).flatten(1, 2)


def pack(models: Sequence[nn.Module]) -> Cohort:
    """Pack K models of one architecture (each with its own weights and buffers) into a :class:`Cohort`.

    Raises:
        TypeError: a module type has no converter in :data:`CONVERTERS` (the message names it).
        ValueError: the models differ in architecture or a layer cannot be packed.
    """
    if not models:
        raise ValueError("cannot pack an empty list of models")
    _check_same_shapes(models)
    selection = Selection(len(models))
    return Cohort(_convert(models, selection, type(models[0]).__qualname__), selection)


def unpack(cohort: Packed) -> list[dict[str, Tensor]]:
    """Each member's state dict (keys, shapes and dtypes of the packed models' own), as copies."""
    stacked = cohort.stacked_state()
    return [{key: value[k].clone() for key, value in stacked.items()} for k in range(cohort.size)]


def _check_same_shapes(models: Sequence[nn.Module]) -> None:
    reference = {key: (value.shape, value.dtype) for key, value in models[0].state_dict().items()}
    for index, model in enumerate(models[1:], 1):
        state = {key: (value.shape, value.dtype) for key, value in model.state_dict().items()}
        if state != reference:
            different = [key for key in {**reference, **state} if state.get(key) != reference.get(key)]
            raise ValueError(f"cannot pack: model {index} differs from model 0 in {', '.join(different[:3])}")
