"""FixBN (Zhong et al., "Making Batch Normalization Great in Federated Deep Learning"): freeze the batch sets'
statistics at the running (global) ones, so that local training normalizes as inference does."""

from __future__ import annotations

from torch import nn

from fedhn.norms.layers import HeterologousNorm

__all__ = ["freeze_statistics", "frozen_layers", "statistics_layers"]


def statistics_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s :class:`HeterologousNorm` layers that keep running statistics (the ones FixBN freezes)."""
    return [name for name, m in model.named_modules() if isinstance(m, HeterologousNorm) and m.has_running_stats]


def freeze_statistics(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Freeze (or unfreeze) the running statistics of every norm layer of ``model`` that keeps them, in place.

    A frozen layer normalizes its batch sets with the running statistics in training mode too (per-sample
    sets, e.g. the ``in``/``ln`` parts of ``sn``, still come from the input), leaves them unchanged and does
    not count batches: it trains exactly as it evaluates. The flag is a module attribute, not state.

    Raises:
        ValueError: ``frozen`` and ``model`` has no layer with running statistics (nothing would be frozen).
    """
    names = statistics_layers(model)
    if frozen and not names:
        raise ValueError(
            "the model has no norm layer with running statistics to freeze (FixBN applies to bn, en, hn, hn_g<G>, "
            "sn and mixtures with a batch set); use such a norm, or do not freeze"
        )
    for name in names:
        model.get_submodule(name).stats_frozen = frozen
    return model


def frozen_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose statistics are frozen."""
    return [name for name, m in model.named_modules() if getattr(m, "stats_frozen", False)]
