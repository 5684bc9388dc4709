"""The normalization family: HN, BN, IN, LN, GN, EN, every (mean set, std set) pair, SN and mixtures.

Every layer is a :class:`HeterologousNorm` built from a spec (:func:`parse_spec`): a preset such as
``bn``, ``hn`` or ``gn_g8``, or ``mean=<sets>,std=<sets>``. Homologous presets dispatch to PyTorch's
native kernels (``bn`` to ``F.batch_norm``, ``in``/``ln``/``gn`` to ``F.group_norm``). Layers with the mean
set ``bn`` and batch std sets (``hn``, ``hn_g<G>``, ``mean=bn,std=bn+en``) train through the fused CPU
kernel of :mod:`fedhn.norms.fused`; in eval mode, one batch mean set with one batch std set runs
``F.batch_norm`` on the running statistics. :func:`fedhn.folding.fold_norms` folds such norms away for
inference.

Buffer convention (relied on by the server's statistics pooling, :mod:`strategies`):

- ``running_mean``: one entry per group of each mean set that pools over the batch (C for ``bn``,
  G for ``en_g<G>``), concatenated in spec order. Absent when no mean set pools over the batch.
- ``running_var``: one entry per group of each std set that pools over the batch (C for ``bn``, 1 for
  ``en``, G for ``en_g<G>``), concatenated in spec order: the running *unbiased* variance of the group
  around the group's own mean.
- ``running_var_center``: the running mean of each std group, same length as ``running_var``. Present
  only when it cannot be derived: if the layer has exactly one batch mean set with M groups and one
  batch std set with G groups and G divides M, the center of std group g is the average of
  ``running_mean[g*M/G:(g+1)*M/G]`` (exact, all channels hold the same number of pixels).
- ``num_batches_tracked``: int64 count of training batches, present when any set pools over the batch.

``bn`` has exactly the buffers (and state-dict keys) of ``nn.BatchNorm2d``. Per-sample sets (``in``,
``ln``, ``gn``) keep no running statistics: they are computed from the input in eval mode too.
"""

from fedhn.norms.factory import NO_NORM, NORM_TYPES, NormLayer, is_no_norm, is_norm, norm_layer, replace_norms
from fedhn.norms.freeze import freeze_statistics, frozen_layers, statistics_layers
from fedhn.norms.layers import HeterologousNorm
from fedhn.norms.pixel_sets import PixelSet, parse_pixel_set, parse_pixel_sets
from fedhn.norms.spec import PRESETS, NormSpec, Preset, parse_spec

__all__ = [
    "HeterologousNorm",
    "NO_NORM",
    "NORM_TYPES",
    "NormLayer",
    "NormSpec",
    "PRESETS",
    "PixelSet",
    "Preset",
    "freeze_statistics",
    "frozen_layers",
    "is_no_norm",
    "is_norm",
    "norm_layer",
    "parse_pixel_set",
    "parse_pixel_sets",
    "parse_spec",
    "replace_norms",
    "statistics_layers",
]
