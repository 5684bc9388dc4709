"""Batch Renormalization (Ioffe, NeurIPS 2017), Algorithm 1.

In training, the batch-normalized value is corrected towards what the running statistics would give:

    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta,
    r = clip(sigma_B / sigma, 1 / r_max, r_max),   d = clip((mu_B - mu) / sigma, -d_max, d_max),

with ``sigma_B = sqrt(var_B + eps)`` (biased batch variance), ``mu`` and ``sigma = sqrt(running_var + eps)``
the running statistics before this batch's update, and r, d treated as constants (no gradient flows
through them). With r_max = 1 and d_max = 0 it is BatchNorm. The running mean and variance are updated
as BatchNorm updates them, and eval mode is BatchNorm's on them: a fixed affine map per channel that
folds into the preceding layer. The paper starts training at r_max = 1, d_max = 0 and relaxes both to
their targets; in fedhn that schedule is by federated round (:func:`fedhn.app.schedule.renorm_limits`,
set on a model with :func:`set_renorm_limits`).

Since ``gamma * (x_hat * r + d) + beta = (gamma * r) * x_hat + (gamma * d + beta)``, a training step is
``F.batch_norm`` with the corrected affine parameters: PyTorch's kernel computes the batch statistics,
their gradient and the running update, and with r = 1, d = 0 the result is BatchNorm's bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedhn.norms.functional import unbiased

__all__ = ["BatchRenorm", "corrected_affine", "renorm_corrections", "set_renorm_limits"]


def renorm_corrections(
    x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float, r_max: float, d_max: float
) -> tuple[Tensor, Tensor]:
    """r and d (each (C,), no gradient) of batch ``x`` (N, C, *spatial) against running statistics (C,)."""
    with torch.no_grad():
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        sigma = (running_var + eps).sqrt()
        r = ((var + eps).sqrt() / sigma).clamp(1 / r_max, r_max)
        d = ((mean - running_mean) / sigma).clamp(-d_max, d_max)
    return r, d


def corrected_affine(weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``(gamma * r, gamma * d + beta)`` (``(r, d)`` without affine parameters): the affine parameters that make
    BatchNorm's output Batch Renorm's."""
    if weight is None:
        return r, d
    return weight * r, torch.addcmul(bias, weight, d)


class BatchRenorm(nn.modules.batchnorm._BatchNorm):
    """Batch Renormalization over (N, C) or (N, C, *spatial) inputs, with BatchNorm's buffers
    (``running_mean``, ``running_var`` unbiased, ``num_batches_tracked``) and state-dict keys.

    Args:
        num_features: number of channels C.
        eps: added to the variances.
        momentum: factor of the running averages, or ``None`` for a cumulative average (BatchNorm's rule).
        affine: learn ``weight`` (gamma) and ``bias`` (beta).
        r_max: bound of the std correction r (>= 1); the paper's target is 3.
        d_max: bound of the mean correction d (>= 0); the paper's target is 5.
    """

    has_running_stats = True
    """Like :class:`~fedhn.norms.HeterologousNorm`'s property: calibration sets this layer's statistics."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
    ) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be a positive channel count, got {num_features}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.set_limits(r_max, d_max)

    def set_limits(self, r_max: float, d_max: float) -> None:
        """Set the bounds of r and d (e.g. each round of the schedule).

        Raises:
            ValueError: ``r_max < 1`` or ``d_max < 0`` (r = 1, d = 0 must stay inside the bounds).
        """
        if not r_max >= 1:
            raise ValueError(f"r_max bounds r to [1/r_max, r_max], so it must be >= 1 (1 = BatchNorm), got {r_max}")
        if not d_max >= 0:
            raise ValueError(f"d_max bounds d to [-d_max, d_max], so it must be >= 0 (0 = BatchNorm), got {d_max}")
        self.r_max, self.d_max = float(r_max), float(d_max)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchRenorm({self.num_features}) expects input of shape (N, {self.num_features}, ...), "
                f"got {tuple(x.shape)}"
            )
        if self.training and x.numel() // self.num_features < 2:
            raise ValueError(
                f"BatchRenorm normalizes with batch statistics in training, but an input of shape {tuple(x.shape)} "
                "holds a single value per channel; train with at least 2 values per channel (batch size 2, or "
                "spatial maps), or use frn, which normalizes each sample alone"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        weight, bias = corrected_affine(self.weight, self.bias, *self.corrections(x))
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, True, self._update_factor(), self.eps)

    def corrections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """r and d (each (C,), no gradient) of batch ``x`` against the current running statistics."""
        return renorm_corrections(x, self.running_mean, self.running_var, self.eps, self.r_max, self.d_max)

    def _update_factor(self) -> float:
        """Advance the batch counter and return the running-average factor (BatchNorm's rule)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    @torch.no_grad()
    def set_population_statistics(self, channel_mean: Tensor, channel_var: Tensor, count: float) -> None:
        """Set the running statistics to a population's: each channel's mean and biased variance over
        ``count`` values (the variance is stored unbiased, as the running update does)."""
        self.running_mean.copy_(channel_mean)
        self.running_var.copy_(unbiased(channel_var, count))


def set_renorm_limits(model: nn.Module, r_max: float, d_max: float) -> int:
    """Set r_max and d_max of every :class:`BatchRenorm` of ``model``; return how many there are."""
    layers = [module for module in model.modules() if isinstance(module, BatchRenorm)]
    for layer in layers:
        layer.set_limits(r_max, d_max)
    return len(layers)
