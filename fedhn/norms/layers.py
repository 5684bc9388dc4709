"""The :class:`HeterologousNorm` module: state (parameters, running statistics) around the math of
:mod:`fedhn.norms.functional`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.norms.functional import expand_groups, mix, normalize, pool_moments, set_moments, set_size, unbiased
from fedhn.norms.fused import accepts, fused_norm, update_running
from fedhn.norms.pixel_sets import PixelSet, parse_pixel_sets
from fedhn.norms.spec import NormSpec

__all__ = ["HeterologousNorm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class HeterologousNorm(nn.Module):
    """Normalization with the mean from one pixel set and the std from another (eq. (1)-(2)).

    Args:
        num_features: number of channels C.
        mean: the mean's pixel set, or a ``+``-joined mixture (``bn``, ``in``, ``ln``, ``gn_g<G>``,
            ``en_g<G>``, ...). See :mod:`fedhn.norms.pixel_sets`.
        std: the std's pixel set or mixture. The std is ``sqrt(var + eps)``, ``var`` the biased
            variance of the std set around that set's own mean.
        eps: added to the variance.
        momentum: factor of the exponential moving average of the running statistics, or ``None``
            for a cumulative average (as in :class:`torch.nn.BatchNorm2d`).
        affine: learn a per-channel scale ``weight`` and shift ``bias``.

    Mixtures learn softmax weights over their sets (parameters ``mean_logits`` / ``var_logits``,
    Switchable Normalization's mechanism); the variances are mixed, then the square root is taken.
    Buffers follow the convention of :mod:`fedhn.norms`.

    ``stats_frozen`` (FixBN, set by :func:`fedhn.norms.freeze_statistics`; not part of the state dict): the
    batch sets normalize with the running statistics in training mode too and the running statistics no
    longer change, so the layer trains exactly as it evaluates (no fused or native training kernel runs).
    """

    def __init__(
        self,
        num_features: int,
        mean: str = "bn",
        std: str = "en",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be a positive channel count, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.mean_sets = _resolve(parse_pixel_sets(mean), num_features, "mean")
        self.std_sets = _resolve(parse_pixel_sets(std), num_features, "std")
        self._running_mean_sets = tuple(s for s in self.mean_sets if s.over_batch)
        self._running_var_sets = tuple(s for s in self.std_sets if s.over_batch)
        self._kernel = self._native_kernel()
        self._fused = self.mean_sets == (PixelSet(True, None),) and all(s.over_batch for s in self.std_sets)
        self._affine_in_eval = len(self.mean_sets) == len(self.std_sets) == 1 and self.spec.uses_running_stats_only
        self.stats_frozen = False

        if affine:
            self.weight = nn.Parameter(torch.empty(num_features))
            self.bias = nn.Parameter(torch.empty(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        for role, sets in (("mean", self.mean_sets), ("var", self.std_sets)):
            logits = nn.Parameter(torch.zeros(len(sets))) if len(sets) > 1 else None
            self.register_parameter(f"{role}_logits", logits)

        groups = lambda sets: sum(s.num_groups(num_features) for s in sets)  # noqa: E731
        if self._running_mean_sets:
            self.register_buffer("running_mean", torch.zeros(groups(self._running_mean_sets)))
        if self._running_var_sets:
            self.register_buffer("running_var", torch.ones(groups(self._running_var_sets)))
            if not self._center_derivable():
                self.register_buffer("running_var_center", torch.zeros(groups(self._running_var_sets)))
        if self._running_mean_sets or self._running_var_sets:
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.reset_parameters()

    @property
    def spec(self) -> NormSpec:
        """The layer's mean and std sets (resolved for its channel count)."""
        return NormSpec(self.mean_sets, self.std_sets)

    @property
    def has_running_stats(self) -> bool:
        """Whether some set pools over the batch (the layer keeps running statistics)."""
        return bool(self._running_mean_sets or self._running_var_sets)

    @torch.no_grad()
    def set_population_statistics(self, channel_mean: Tensor, channel_var: Tensor, count: float) -> None:
        """Set the running statistics to those of a population, given each channel's mean and biased
        variance over ``count`` pixels per channel (e.g. a whole dataset): each batch set's groups
        pool their channels exactly; variances are stored unbiased, as the running updates do."""
        channels = self.num_features
        for role, sets in (("mean", self._running_mean_sets), ("var", self._running_var_sets)):
            for s in sets:
                groups = s.num_groups(channels)
                mean, var = pool_moments(channel_mean.view(groups, -1), channel_var.view(groups, -1), (1,))
                segment = _segment(sets, s, channels)
                if role == "mean":
                    self.running_mean[segment] = mean.view(-1).to(self.running_mean)
                    continue
                pixels = count * channels / groups
                self.running_var[segment] = unbiased(var.view(-1), pixels).to(self.running_var)
                if hasattr(self, "running_var_center"):
                    self.running_var_center[segment] = mean.view(-1).to(self.running_var_center)

    def reset_running_stats(self) -> None:
        """Running means and centers to 0, running variances to 1, the batch counter to 0."""
        for name, value in (("running_mean", 0.0), ("running_var", 1.0), ("running_var_center", 0.0)):
            if hasattr(self, name):
                getattr(self, name).fill_(value)
        if hasattr(self, "num_batches_tracked"):
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Identity affine map, equal mixture weights, fresh running statistics."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)
        for logits in (self.mean_logits, self.var_logits):
            if logits is not None:
                nn.init.zeros_(logits)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, mean={'+'.join(map(str, self.mean_sets))}, "
            f"std={'+'.join(map(str, self.std_sets))}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}"
        )

    @property
    def batch_statistics(self) -> bool:
        """Whether this forward computes the batch sets' statistics from the input (and updates the running
        ones): in training mode, unless the statistics are frozen."""
        return self.training and not self.stats_frozen

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        batch = self.batch_statistics
        if self._kernel == "batch_norm":
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                batch,
                self._update_factor() if batch else 0.0,
                self.eps,
            )
        if self._kernel == "group_norm":
            return F.group_norm(x, self.mean_sets[0].groups or self.num_features, self.weight, self.bias, self.eps)
        if batch and self._fused and accepts(x, self.weight, self.running_mean):
            return self._forward_fused(x)
        if not batch and self._affine_in_eval:
            return self._forward_running(x)
        return self._forward_heterologous(x)

    def _forward_fused(self, x: Tensor) -> Tensor:
        """Training with the mean set bn and batch std sets: :mod:`fedhn.norms.fused`'s operators (the
        normalization, then the running statistics' update)."""
        y, stats = fused_norm(x, self.std_sets, self.weight, self.bias, self.var_logits, self.eps)
        center = getattr(self, "running_var_center", None)
        update_running(stats, self.running_mean, self.running_var, center, self.std_sets, self._update_factor())
        return y

    def _forward_running(self, x: Tensor) -> Tensor:
        """Eval with one batch mean set and one batch std set: BatchNorm's native kernel on the running
        statistics expanded to channels."""
        return F.batch_norm(x, *self.running_statistics(), self.weight, self.bias, False, 0.0, self.eps)

    def running_statistics(self) -> tuple[Tensor, Tensor]:
        """The per-channel mean and variance (each (C,)) that eval mode normalizes with, for a layer whose
        sets all pool over the batch (``spec.uses_running_stats_only``): eval mode is then the affine map
        ``functional.affine_coefficients(mean, var, weight, bias, eps)`` per channel."""
        if not self.spec.uses_running_stats_only:
            raise ValueError(f"{self.spec} computes statistics of each sample in eval mode; it has no fixed statistics")
        mean = mix([self._stat(s, {}, 0) for s in self.mean_sets], self.mean_logits)
        var = mix([self._stat(s, {}, 1) for s in self.std_sets], self.var_logits)
        return mean[0], var[0]

    def _forward_heterologous(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        if x3.dtype in _LOW_PRECISION:
            x3 = x3.float()
        batch = self.batch_statistics
        from_input = [s for s in self.mean_sets + self.std_sets if batch or not s.over_batch]
        moments = set_moments(x3, from_input) if from_input else {}
        if batch and self.has_running_stats:
            self._update_running_stats(moments, x.shape)
        mean = mix([self._stat(s, moments, 0) for s in self.mean_sets], self.mean_logits)
        var = mix([self._stat(s, moments, 1) for s in self.std_sets], self.var_logits)
        y = normalize(x3, mean, var, self.weight, self.bias, self.eps)
        return y.to(x.dtype).view(x.shape)

    def _stat(self, s: PixelSet, moments: dict[PixelSet, tuple[Tensor, Tensor]], which: int) -> Tensor:
        """Mean (which=0) or variance (which=1) of set ``s`` as (B, C): from the input, or from the
        running buffers for a batch set in eval mode."""
        if s in moments:
            stat = moments[s][which]
        else:
            buffer, sets = (
                (self.running_mean, self._running_mean_sets)
                if which == 0
                else (self.running_var, self._running_var_sets)
            )
            stat = buffer[_segment(sets, s, self.num_features)].unsqueeze(0)
        return expand_groups(stat, self.num_features)

    @torch.no_grad()
    def _update_running_stats(self, moments: dict[PixelSet, tuple[Tensor, Tensor]], shape: torch.Size) -> None:
        factor = self._update_factor()
        for s in self._running_mean_sets:
            segment = _segment(self._running_mean_sets, s, self.num_features)
            self.running_mean[segment].lerp_(moments[s][0][0].to(self.running_mean.dtype), factor)
        for s in self._running_var_sets:
            segment = _segment(self._running_var_sets, s, self.num_features)
            count = set_size(s, shape)
            variance = unbiased(moments[s][1][0], count)
            self.running_var[segment].lerp_(variance.to(self.running_var.dtype), factor)
            if hasattr(self, "running_var_center"):
                self.running_var_center[segment].lerp_(moments[s][0][0].to(self.running_var_center.dtype), factor)

    def _update_factor(self) -> float:
        """Advance the batch counter and return the running-average factor (BatchNorm's rule)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _center_derivable(self) -> bool:
        """Whether each running variance's center (its std group's own mean) is the average of
        consecutive ``running_mean`` entries, so that no ``running_var_center`` buffer is needed."""
        if len(self._running_mean_sets) != 1 or len(self._running_var_sets) != 1:
            return False
        mean_groups = self._running_mean_sets[0].num_groups(self.num_features)
        return mean_groups % self._running_var_sets[0].num_groups(self.num_features) == 0

    def _native_kernel(self) -> str | None:
        if len(self.mean_sets) == 1 and self.mean_sets == self.std_sets:
            (s,) = self.mean_sets
            if s == PixelSet(True, None):
                return "batch_norm"
            if not s.over_batch:
                return "group_norm"
        return None

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects input of shape (N, {self.num_features}, ...), "
                f"got {tuple(x.shape)}"
            )
        batch = self.batch_statistics
        for role, sets in (("mean", self.mean_sets), ("std", self.std_sets)):
            used = [s for s in sets if batch or not s.over_batch]
            if used and all(set_size(s, x.shape) < 2 for s in used):
                names = "+".join(map(str, used))
                raise ValueError(
                    f"The {role} set {names} holds a single value per group for an input of shape {tuple(x.shape)}"
                    f"{' in training' if batch else ''}, so the {role} is the input itself. "
                    + (
                        "Train with at least 2 samples per batch, or use a set that spans more pixels."
                        if any(s.over_batch for s in used)
                        else "Use a set that spans more pixels (ln, gn_g<G> or a batch set) for this layer."
                    )
                )


def _resolve(sets: tuple[PixelSet, ...], channels: int, role: str) -> tuple[PixelSet, ...]:
    resolved = tuple(s.resolve(channels) for s in sets)
    if len(set(resolved)) != len(resolved):
        names = "+".join(map(str, sets))
        raise ValueError(
            f"The {role} mixture {names} names the same set twice for {channels} channels; list each set once"
        )
    return resolved


def _segment(sets: tuple[PixelSet, ...], target: PixelSet, channels: int) -> slice:
    """Entries of the concatenated running buffer that belong to ``target``."""
    start = 0
    for s in sets:
        size = s.num_groups(channels)
        if s == target:
            return slice(start, start + size)
        start += size
    raise KeyError(target)
