"""Fold norms with fixed eval statistics into the layer before them, for inference (section 3 of the paper).

A norm whose eval statistics are running estimates (``bn``, ``en``, ``hn``, ``hn_g<G>``, mixtures of batch
sets, ``brn``, ``nn.BatchNorm*`` tracking running stats) is a per-channel affine map ``x * scale + shift`` in eval
mode. Placed directly after a ``Conv1d/2d/3d`` or ``Linear`` whose output feeds nothing else, it folds into
that layer's weight and bias; elsewhere it becomes a :class:`ChannelAffine`. Norms that compute statistics
of each sample (``in``, ``ln``, ``gn``, ``sn``, ...) stay. A model with FRN layers is refused: FRN is nothing
but a per-sample normalization, so folding would leave it unchanged while promising inference without norms.

The layer before a norm is found in the graph of :func:`torch.fx.symbolic_trace` (norms traced as leaves).
Models that do not trace fall back to adjacent modules of ``nn.Sequential`` containers and to the known
pairs of fedhn's CIFAR ResNet blocks.

Scaled weight-standardized convolutions (:class:`fedhn.models.norm_free.WSConv2d`) become the plain
``nn.Conv2d`` of their standardized weight first, so norms after them fold as after any convolution.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from fedhn.models.cifar_resnet import BasicBlock
from fedhn.models.norm_free import WSConv2d
from fedhn.norms import FilterResponseNorm, HeterologousNorm, is_norm
from fedhn.norms.functional import affine_coefficients

__all__ = ["ChannelAffine", "FoldReport", "fold_norms"]

FOLDABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# (layer, norm) attribute pairs of blocks whose forward applies ``norm(layer(x))``; used when tracing fails.
KNOWN_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "norm1"), ("conv2", "norm2")),
}


class ChannelAffine(nn.Module):
    """``x * scale[c] + shift[c]`` over dimension 1: a folded norm with no layer to fold into."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(shape), x, self.scale.view(shape))

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


@dataclass
class FoldReport:
    """What :func:`fold_norms` did with each norm, by module name.

    Attributes:
        folded: norm name -> name of the layer it was folded into (the norm is now ``nn.Identity``).
        affine: norms with fixed statistics but no layer to fold into, now :class:`ChannelAffine`.
        kept: norms that compute statistics of each sample in eval mode, unchanged.
        standardized: weight-standardized convolutions, now plain ``nn.Conv2d`` with the standardized weight.
        traced: whether the layer before each norm came from the traced graph (else from the fallback).
    """

    folded: dict[str, str] = field(default_factory=dict)
    affine: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    standardized: list[str] = field(default_factory=list)
    traced: bool = True


def fold_norms(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of ``model`` with every norm of fixed eval statistics folded away, and the report.

    ``model`` itself is not changed. The copy computes the same eval outputs (up to float rounding: the
    folded weights are computed in float64 and stored in the layer's dtype); train it no further, its
    norms are gone.

    Raises:
        ValueError: the model has FRN layers (they divide each sample by its own mean square, in eval mode too).
    """
    frn = [name for name, module in model.named_modules() if isinstance(module, FilterResponseNorm)]
    if frn:
        raise ValueError(
            f"cannot fold {len(frn)} FRN layers ({', '.join(frn[:3])}{', ...' if len(frn) > 3 else ''}): FRN divides "
            "each sample's channel by that sample's own root mean square over (H, W), in eval mode too, so it is no "
            "fixed affine map and nothing would fold; norms with running statistics (bn, brn, hn, ...) fold"
        )
    folded_model = copy.deepcopy(model).eval()
    report = FoldReport()
    for name, module in list(folded_model.named_modules()):
        if isinstance(module, WSConv2d):
            if name:
                _set_module(folded_model, name, module.plain())
            else:
                folded_model = module.plain().eval()
            report.standardized.append(name)
    modules = dict(folded_model.named_modules())
    try:
        pairs = _traced_pairs(folded_model, modules)
    except Exception:  # any tracing failure: use the structural fallback
        pairs, report.traced = _structural_pairs(folded_model), False
    for name, norm in modules.items():
        if not name or not is_norm(norm):
            continue
        coefficients = _eval_affine(norm)
        if coefficients is None:
            report.kept.append(name)
        elif name in pairs:
            _fold_into(modules[pairs[name]], *coefficients)
            _set_module(folded_model, name, nn.Identity())
            report.folded[name] = pairs[name]
        else:
            dtype = next(norm.buffers()).dtype
            _set_module(folded_model, name, ChannelAffine(*(c.to(dtype) for c in coefficients)))
            report.affine.append(name)
    return folded_model, report


class _NormLeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_norm(module) or super().is_leaf_module(module, qualified_name)


def _traced_pairs(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, str]:
    """norm name -> name of the foldable layer whose output only that norm reads, from the traced graph."""
    graph = _NormLeafTracer().trace(model)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not is_norm(modules[node.target]) or not node.args:
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], FOLDABLE_LAYERS)
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
        ):
            pairs[node.target] = source.target
    return pairs


def _structural_pairs(model: nn.Module) -> dict[str, str]:
    """norm name -> layer name from adjacent modules of ``nn.Sequential`` and :data:`KNOWN_PAIRS`,
    for layers and norms that occur once in the model."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = {}
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            candidates = [(a, b) for (a, _), (b, _) in zip(children, children[1:], strict=False)]
        else:
            candidates = list(KNOWN_PAIRS.get(type(parent), ()))
        for layer_name, norm_name in candidates:
            layer, norm = getattr(parent, layer_name), getattr(parent, norm_name)
            if isinstance(layer, FOLDABLE_LAYERS) and is_norm(norm) and uses[id(layer)] == uses[id(norm)] == 1:
                pairs[prefix + norm_name] = prefix + layer_name
    return pairs


@torch.no_grad()
def _eval_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Per-channel ``(scale, shift)`` of ``norm`` in eval mode in float64, or ``None`` when its eval
    statistics depend on the input."""
    if isinstance(norm, HeterologousNorm) and norm.spec.uses_running_stats_only:
        mean, var = norm.running_statistics()
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        mean, var = norm.running_mean, norm.running_var
    else:
        return None
    weight = None if norm.weight is None else norm.weight.double()
    bias = None if norm.bias is None else norm.bias.double()
    return affine_coefficients(mean.double(), var.double(), weight, bias, norm.eps)


@torch.no_grad()
def _fold_into(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """Make ``layer`` compute ``layer(x) * scale + shift`` (float64 scale and shift per output channel)."""
    dtype, weight = layer.weight.dtype, layer.weight.double()
    bias = torch.zeros_like(shift) if layer.bias is None else layer.bias.double()
    layer.weight = nn.Parameter((weight * scale.view((-1,) + (1,) * (weight.dim() - 1))).to(dtype))
    layer.bias = nn.Parameter((bias * scale + shift).to(dtype))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)
