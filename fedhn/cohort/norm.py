"""K :class:`~fedhn.norms.HeterologousNorm` layers of one spec as one layer on (B, K*C, *spatial).

Member k's channels are k*C..(k+1)*C. A per-member set maps onto a set over the K*C channels with
K times its groups (``bn``/``in`` stay per channel, ``ln`` becomes K groups, ``en_g<G>`` becomes
``en_g<K*G>``, ``gn_g<G>`` becomes ``gn_g<K*G>``), so one member's statistics never mix with another's.
Single-set specs therefore run PyTorch's kernels (``bn``: ``F.batch_norm``; ``in``/``ln``/``gn``:
``F.group_norm``) and ``hn``/``hn_g<G>`` fedhn's fused kernel, unchanged. Mixtures (``sn``,
``mean=bn,std=bn+en``) need K softmaxes, one per member: they, ``en_g<G>`` and a cumulative average
(``momentum=None``) over members with different batch counts take the general path, which mixes
per member. Layers with frozen statistics (FixBN, ``stats_frozen``) normalize each member with its own
running statistics (and per-sample sets from the input) and update nothing.

Parameters and buffers keep the member layer's names, stacked over members (dim 0); the batch
counter is one int64 per member. The layer trains only: evaluate unpacked models.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.cohort.layers import stack_parameter
from fedhn.cohort.members import Members, Selection, put_, take
from fedhn.norms import HeterologousNorm, PixelSet
from fedhn.norms.functional import expand_groups, normalize, set_moments, set_size
from fedhn.norms.fused import accepts, fused_norm, update_running

__all__ = ["CohortNorm", "packed_batch_norm"]

_BN = PixelSet(True, None)
_BUFFERS = ("running_mean", "running_var", "running_var_center", "num_batches_tracked")


def packed_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    state: dict[str, Tensor],
    factor: float,
    eps: float,
    selection: Selection,
) -> Tensor:
    """``F.batch_norm`` over the k*C channels of the selected members, moving their ``running_mean`` and
    ``running_var`` rows in ``state`` (each (k, C)). Its backward reads the running statistics it updated, so a
    step that runs several groups (which update other rows of the same buffers before the backward) hands it
    copies."""
    names = ("running_mean", "running_var")
    if selection.count == selection.size:
        return F.batch_norm(x, *(state[name].view(-1) for name in names), weight, bias, True, factor, eps)
    running = [state[name].view(-1).clone() for name in names]
    y = F.batch_norm(x, *running, weight, bias, True, factor, eps)
    with torch.no_grad():
        for name, rows in zip(names, running, strict=True):
            state[name].copy_(rows.view_as(state[name]))
    return y


def _scaled(s: PixelSet, members: int) -> PixelSet:
    """The set over ``members`` times the channels that computes ``s`` for each member."""
    return s if s.groups is None else PixelSet(s.over_batch, s.groups * members)


def _segments(sets: tuple[PixelSet, ...], channels: int) -> list[tuple[PixelSet, slice]]:
    """Each set with where its groups sit in a member's concatenated running buffer."""
    sizes = [s.num_groups(channels) for s in sets]
    starts = itertools.accumulate(sizes, initial=0)
    return [(s, slice(start, start + size)) for s, start, size in zip(sets, starts, sizes, strict=False)]


class CohortNorm(nn.Module):
    """The cohort layer of K ``HeterologousNorm`` of one spec, channel count, eps, momentum and affine."""

    def __init__(self, norms: Sequence[HeterologousNorm], selection: Selection) -> None:
        super().__init__()
        reference = norms[0]
        settings = lambda n: (n.spec, n.num_features, n.eps, n.momentum, n.affine, n.stats_frozen)  # noqa: E731
        if any(settings(n) != settings(reference) for n in norms):
            raise ValueError("cannot pack norm layers of different specs, widths, eps, momentum, affine or freezing")
        self.selection = selection
        self.stats_frozen = reference.stats_frozen
        self.num_features, self.eps, self.momentum = reference.num_features, reference.eps, reference.momentum
        self.mean_sets, self.std_sets = reference.mean_sets, reference.std_sets
        for name in ("weight", "bias", "mean_logits", "var_logits"):
            self.register_parameter(name, stack_parameter(norms, name))
        for name in _BUFFERS:
            if hasattr(reference, name):
                self.register_buffer(name, torch.stack([getattr(n, name) for n in norms]))
        self._running_mean_sets = tuple(s for s in self.mean_sets if s.over_batch)
        self._running_var_sets = tuple(s for s in self.std_sets if s.over_batch)
        mixture = self.mean_logits is not None or self.var_logits is not None
        single = len(self.mean_sets) == 1 and self.mean_sets == self.std_sets
        if single and self.mean_sets[0] == _BN:
            self._kernel = "batch_norm"
        elif single and not self.mean_sets[0].over_batch:
            self._kernel = "group_norm"
        elif self.mean_sets == (_BN,) and all(s.over_batch for s in self.std_sets) and not mixture:
            self._kernel = "fused"
        else:
            self._kernel = "general"

    def extra_repr(self) -> str:
        mean, std = "+".join(map(str, self.mean_sets)), "+".join(map(str, self.std_sets))
        return f"{self.num_features}, mean={mean}, std={std}, eps={self.eps}, momentum={self.momentum}, path={self._kernel}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            raise RuntimeError("a cohort norm layer trains only; evaluate the unpacked models")
        members, k = self.selection.members, self.selection.count
        if x.dim() < 2 or x.shape[1] != k * self.num_features:
            raise ValueError(f"expected (B, {k * self.num_features}, ...) for {k} members, got {tuple(x.shape)}")
        weight = None if self.weight is None else take(self.weight, members).flatten()
        bias = None if self.bias is None else take(self.bias, members).flatten()
        if self._kernel == "group_norm":
            groups = k * (self.mean_sets[0].groups or self.num_features)
            return F.group_norm(x, groups, weight, bias, self.eps)
        if self.stats_frozen:
            return self._forward_frozen(x, weight, bias)
        state = {name: take(getattr(self, name), members) for name in _BUFFERS if hasattr(self, name)}
        factor = self._advance(state)
        if isinstance(factor, float) and self._kernel == "batch_norm":
            y = packed_batch_norm(x, weight, bias, state, factor, self.eps, self.selection)
        elif isinstance(factor, float) and self._kernel == "fused" and accepts(x, weight, state["running_mean"]):
            std_sets = tuple(_scaled(s, k) for s in self.std_sets)
            y, stats = fused_norm(x, std_sets, weight, bias, None, self.eps)
            center = state.get("running_var_center")
            views = [t.view(-1) for t in (state["running_mean"], state["running_var"])]
            update_running(stats, *views, None if center is None else center.view(-1), std_sets, factor)
        else:
            y = self._forward_general(x, weight, bias, state, factor)
        for name, rows in state.items():
            put_(getattr(self, name), members, rows)
        return y

    @torch.no_grad()
    def _advance(self, state: dict[str, Tensor]) -> float | Tensor:
        """Advance the members' batch counters and return the running-average factor: the momentum,
        else 1 / batches, one float when the members' counts agree, else a (k, 1) tensor."""
        if "num_batches_tracked" not in state:
            return 0.0
        counts = state["num_batches_tracked"]
        counts += 1
        if self.momentum is not None:
            return float(self.momentum)
        first = counts[0]
        if bool((counts == first).all()):
            return 1.0 / float(first)
        return (1.0 / counts.double()).unsqueeze(1)

    def _forward_general(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, state: dict[str, Tensor], factor: float | Tensor
    ) -> Tensor:
        """``HeterologousNorm``'s general path with statistics and mixture weights per member."""
        n, channels = x.shape[:2]
        k = channels // self.num_features
        x3 = x.reshape(n, channels, -1)
        mean_sets = [_scaled(s, k) for s in self.mean_sets]
        std_sets = [_scaled(s, k) for s in self.std_sets]
        moments = set_moments(x3, mean_sets + std_sets)
        self._update_running_stats(moments, x.shape, state, factor, k)
        members = self.selection.members
        mean = self._mix([moments[s][0] for s in mean_sets], self.mean_logits, members, channels)
        var = self._mix([moments[s][1] for s in std_sets], self.var_logits, members, channels)
        return normalize(x3, mean, var, weight, bias, self.eps).view(x.shape)

    def _forward_frozen(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """Frozen statistics: each member's batch sets from its running buffers, per-sample sets from the input."""
        n, channels = x.shape[:2]
        k = channels // self.num_features
        x3 = x.reshape(n, channels, -1)
        per_sample = [_scaled(s, k) for s in self.mean_sets + self.std_sets if not s.over_batch]
        moments = set_moments(x3, per_sample) if per_sample else {}
        members = self.selection.members
        mean = self._mix([self._frozen(s, moments, 0, k) for s in self.mean_sets], self.mean_logits, members, channels)
        var = self._mix([self._frozen(s, moments, 1, k) for s in self.std_sets], self.var_logits, members, channels)
        return normalize(x3, mean, var, weight, bias, self.eps).view(x.shape)

    def _frozen(self, s: PixelSet, moments: dict[PixelSet, tuple[Tensor, Tensor]], which: int, k: int) -> Tensor:
        """Mean (which=0) or variance (1) of set ``s`` for the k members, (B or 1, k*G): per-sample sets from
        ``moments``, batch sets from the members' running buffers."""
        if not s.over_batch:
            return moments[_scaled(s, k)][which]
        name, sets = (
            ("running_mean", self._running_mean_sets) if which == 0 else ("running_var", self._running_var_sets)
        )
        segment = dict(_segments(sets, self.num_features))[s]
        return take(getattr(self, name), self.selection.members)[:, segment].reshape(1, -1)

    def _mix(self, stats: list[Tensor], logits: Tensor | None, members: Members, channels: int) -> Tensor:
        """Per-member softmax mixture of the sets' statistics (each (B, k*G)), as (B, k*C)."""
        stats = [expand_groups(stat, channels) for stat in stats]
        if logits is None:
            return stats[0]
        weights = torch.softmax(take(logits, members), dim=1).repeat_interleave(self.num_features, dim=0)
        return sum(weights[:, i] * stat for i, stat in enumerate(stats))

    @torch.no_grad()
    def _update_running_stats(
        self,
        moments: dict[PixelSet, tuple[Tensor, Tensor]],
        shape: torch.Size,
        state: dict[str, Tensor],
        factor: float | Tensor,
        k: int,
    ) -> None:
        """Move each member's running statistics towards its batch's (``HeterologousNorm``'s rule)."""
        if isinstance(factor, Tensor):
            factor = factor.to(next(rows for name, rows in state.items() if name != "num_batches_tracked").dtype)
        for s, segment in _segments(self._running_mean_sets, self.num_features):
            rows = state["running_mean"][:, segment]
            rows.lerp_(moments[_scaled(s, k)][0].view(k, -1).to(rows.dtype), factor)
        for s, segment in _segments(self._running_var_sets, self.num_features):
            mean, var = moments[_scaled(s, k)]
            size = set_size(_scaled(s, k), shape)
            rows = state["running_var"][:, segment]
            rows.lerp_((var * (size / (size - 1))).view(k, -1).to(rows.dtype), factor)
            if "running_var_center" in state:
                centers = state["running_var_center"][:, segment]
                centers.lerp_(mean.view(k, -1).to(centers.dtype), factor)
