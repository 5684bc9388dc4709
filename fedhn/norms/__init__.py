"""The normalization family: HN, BN, IN, LN, GN, EN, every (mean set, std set) pair, SN and mixtures,
and the federated-learning baselines FRN (+ TLU) and Batch Renormalization.

Every (mean set, std set) layer is a :class:`HeterologousNorm` built from a spec (:func:`parse_spec`): a
preset such as ``bn``, ``hn`` or ``gn_g8``, or ``mean=<sets>,std=<sets>``. The presets ``frn``
(:class:`FilterResponseNorm`, followed by :class:`TLU` where the model has its activation:
:func:`activation_after`) and ``brn`` (:class:`BatchRenorm`, BatchNorm's buffers) are layer classes of their
own (:data:`LAYER_PRESETS`, built by :func:`norm_layer`). Homologous presets dispatch to PyTorch's
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

from fedhn.norms.batch_renorm import BatchRenorm, set_renorm_limits
from fedhn.norms.factory import (
    LAYER_CLASSES,
    NO_NORM,
    NORM_TYPES,
    NormLayer,
    is_no_norm,
    is_norm,
    norm_layer,
    replace_norms,
)
from fedhn.norms.freeze import freeze_statistics, frozen_layers, statistics_layers
from fedhn.norms.frn import TLU, FilterResponseNorm, activation_after
from fedhn.norms.layers import HeterologousNorm
from fedhn.norms.pixel_sets import PixelSet, parse_pixel_set, parse_pixel_sets
from fedhn.norms.spec import LAYER_PRESETS, PRESETS, LayerPreset, NormSpec, Preset, parse_spec

__all__ = [
    "BatchRenorm",
    "FilterResponseNorm",
    "HeterologousNorm",
    "LAYER_CLASSES",
    "LAYER_PRESETS",
    "LayerPreset",
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
    "TLU",
    "activation_after",
    "replace_norms",
    "set_renorm_limits",
    "statistics_layers",
]
