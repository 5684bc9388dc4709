"""Cohort versions of the FL baselines' own layers on the packed layout (B, K*C, ...) of :mod:`fedhn.cohort.pack`:
Filter Response Normalization and its TLU act on each (sample, channel) alone, so K of them are one layer over
the K*C channels; Batch Renormalization is BatchNorm's kernel with per-channel corrected affine parameters, so
K of them are one ``F.batch_norm`` over K*C channels. Each member keeps its own parameters and buffers (stacked
over members, dim 0, with the member layer's names); the layers train only: evaluate the unpacked models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedhn.cohort.layers import stack_parameter
from fedhn.cohort.members import Selection, put_, take
from fedhn.cohort.norm import packed_batch_norm
from fedhn.norms.batch_renorm import BatchRenorm, corrected_affine, renorm_corrections
from fedhn.norms.frn import TLU, FilterResponseNorm, filter_response_norm, one_position, thresholded_linear_unit

__all__ = ["CohortBatchRenorm", "CohortFilterResponseNorm", "CohortTLU"]

_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _check_same(modules: Sequence[nn.Module], settings: tuple[str, ...]) -> None:
    values = [tuple(getattr(module, name) for name in settings) for module in modules]
    if any(value != values[0] for value in values):
        raise ValueError(f"cannot pack {type(modules[0]).__name__} layers of different {', '.join(settings)}")


def _flat(parameter: Tensor | None, selection: Selection) -> Tensor | None:
    """The selected members' (k, C) rows of a stacked per-channel parameter as one (k*C,) vector."""
    return None if parameter is None else take(parameter, selection.members).flatten()


class CohortFilterResponseNorm(nn.Module):
    """K :class:`~fedhn.norms.FilterResponseNorm` of one width, eps and affine: weight, bias (K, C), eps_l (K,)."""

    def __init__(self, norms: Sequence[FilterResponseNorm], selection: Selection) -> None:
        super().__init__()
        _check_same(norms, ("num_features", "eps", "affine"))
        self.selection = selection
        self.num_features, self.eps = norms[0].num_features, norms[0].eps
        for name in ("weight", "bias", "eps_l"):  # the member layer's parameter order
            self.register_parameter(name, stack_parameter(norms, name))

    def forward(self, x: Tensor) -> Tensor:
        eps = self.eps + take(self.eps_l, self.selection.members).abs() * one_position(x)
        eps = eps.repeat_interleave(self.num_features)
        return filter_response_norm(x, _flat(self.weight, self.selection), _flat(self.bias, self.selection), eps)


class CohortTLU(nn.Module):
    """K :class:`~fedhn.norms.TLU` of one width: tau (K, C)."""

    def __init__(self, units: Sequence[TLU], selection: Selection) -> None:
        super().__init__()
        _check_same(units, ("num_features",))
        self.selection = selection
        self.tau = stack_parameter(units, "tau")

    def forward(self, x: Tensor) -> Tensor:
        return thresholded_linear_unit(x, _flat(self.tau, self.selection))


class CohortBatchRenorm(nn.Module):
    """K :class:`~fedhn.norms.BatchRenorm` of one width, eps, momentum, affine and bounds (the round's r_max and
    d_max): weight, bias, running_mean, running_var (K, C), num_batches_tracked (K,)."""

    def __init__(self, norms: Sequence[BatchRenorm], selection: Selection) -> None:
        super().__init__()
        _check_same(norms, ("num_features", "eps", "momentum", "affine", "r_max", "d_max"))
        reference = norms[0]
        if reference.momentum is None:
            raise ValueError(
                "cannot pack BatchRenorm with a cumulative average (momentum=None): members' batch counts may differ"
            )
        self.selection = selection
        self.eps, self.momentum = reference.eps, float(reference.momentum)
        self.r_max, self.d_max = reference.r_max, reference.d_max
        for name in ("weight", "bias"):
            self.register_parameter(name, stack_parameter(norms, name))
        for name in _RUNNING:
            self.register_buffer(name, torch.stack([getattr(n, name) for n in norms]))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            raise RuntimeError("a cohort norm layer trains only; evaluate the unpacked models")
        members = self.selection.members
        state = {name: take(getattr(self, name), members) for name in _RUNNING}
        r, d = renorm_corrections(
            x, state["running_mean"].view(-1), state["running_var"].view(-1), self.eps, self.r_max, self.d_max
        )
        weight, bias = corrected_affine(_flat(self.weight, self.selection), _flat(self.bias, self.selection), r, d)
        with torch.no_grad():
            state["num_batches_tracked"] += 1
        y = packed_batch_norm(x, weight, bias, state, self.momentum, self.eps, self.selection)
        for name, rows in state.items():
            put_(getattr(self, name), members, rows)
        return y
