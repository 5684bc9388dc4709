"""Norm specs: one grammar and one preset table for every normalization fedhn builds.

A spec names the mean set and the std set of a layer (eq. (1) of the paper). It is either a preset
(`bn`, `hn`, `gn_g8`, ...) or the general form ``mean=<sets>,std=<sets>`` where ``<sets>`` is one
pixel set or a ``+``-joined mixture (combined with learnable softmax weights, as in Switchable
Normalization). The CLI listing, the models and the run-config validation all go through
:func:`parse_spec`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from fedhn.norms.pixel_sets import PixelSet, parse_pixel_sets

__all__ = ["LAYER_PRESETS", "LayerPreset", "NormSpec", "Preset", "PRESETS", "parse_spec"]


@dataclass(frozen=True)
class Preset:
    """A named spec. ``<G>`` in a name stands for any number of channel groups."""

    name: str
    mean: str
    std: str
    description: str


PRESETS: tuple[Preset, ...] = (
    Preset("bn", "bn", "bn", "Batch Normalization (= nn.BatchNorm2d)"),
    Preset("in", "in", "in", "Instance Normalization (= nn.InstanceNorm2d(C, affine=True))"),
    Preset("ln", "ln", "ln", "Layer Normalization over (C,H,W) (= nn.GroupNorm(1, C))"),
    Preset("gn", "gn", "gn", "Group Normalization, 32 groups (= nn.GroupNorm(32, C))"),
    Preset("gn_g<G>", "gn_g<G>", "gn_g<G>", "Group Normalization, G groups"),
    Preset("en", "en", "en", "Extended Normalization: all of (N,C,H,W)"),
    Preset("en_g<G>", "en_g<G>", "en_g<G>", "Extended Normalization, G channel groups over the batch"),
    Preset("hn", "bn", "en", "Heterologous Normalization: BN mean, EN std"),
    Preset("hn_g<G>", "bn", "en_g<G>", "Heterologous Normalization: BN mean, EN_G std"),
    Preset("sn", "bn+in+ln", "bn+in+ln", "Switchable Normalization"),
)


@dataclass(frozen=True)
class LayerPreset:
    """A norm that is not a (mean set, std set) pair but a layer class of its own
    (:data:`fedhn.norms.factory.LAYER_CLASSES` builds it); the fields are what ``fedhn norms`` lists."""

    name: str
    mean: str
    std: str
    inference: str
    description: str


LAYER_PRESETS: tuple[LayerPreset, ...] = (
    LayerPreset(
        "frn",
        "none (not centered)",
        "in (mean of x^2)",
        "per sample",
        "Filter Response Normalization + TLU (Singh and Krishnan, CVPR 2020)",
    ),
    LayerPreset(
        "brn",
        "bn",
        "bn",
        "running (fixed, folds into conv)",
        "Batch Renormalization (Ioffe 2017): BN corrected by r, d towards the running statistics",
    ),
)
_LAYERS = {p.name: p for p in LAYER_PRESETS}
_FIXED = {p.name: p for p in PRESETS if "<G>" not in p.name}
_GROUPED = {p.name.split("_")[0]: p for p in PRESETS if "<G>" in p.name}
_GROUPED_NAME = re.compile(r"^(gn|en|hn)_g(\d+)$")
_GENERAL_EXAMPLE = "mean=bn,std=bn+en"


@dataclass(frozen=True)
class NormSpec:
    """The mean sets and std sets of a normalization layer."""

    mean: tuple[PixelSet, ...]
    std: tuple[PixelSet, ...]

    @property
    def name(self) -> str:
        """The shortest spec string that parses back to this spec."""
        mean, std = "+".join(map(str, self.mean)), "+".join(map(str, self.std))
        for preset in PRESETS:
            if "<G>" not in preset.name and (preset.mean, preset.std) == (mean, std):
                return preset.name
        if self.mean == self.std and len(self.mean) == 1 and mean.startswith(("gn_g", "en_g")):
            return mean
        if self.mean == (PixelSet(True, None),) and len(self.std) == 1 and std.startswith("en_g"):
            return "hn" + std[2:]
        return f"mean={mean},std={std}"

    @property
    def uses_running_stats_only(self) -> bool:
        """Every set pools over the batch: inference uses fixed running statistics only, so the
        layer is an affine map per channel in eval mode (it folds into the preceding layer)."""
        return all(s.over_batch for s in self.mean + self.std)

    @property
    def keeps_running_stats(self) -> bool:
        """Some set pools over the batch: the layer keeps running statistics (and FixBN can freeze them)."""
        return any(s.over_batch for s in self.mean + self.std)

    def __str__(self) -> str:
        return self.name


def parse_spec(spec: str | NormSpec) -> NormSpec:
    """Parse a preset name or a ``mean=<sets>,std=<sets>`` spec.

    Raises:
        ValueError: the spec cannot be parsed or names an unknown set; the message lists what is valid.
    """
    if isinstance(spec, NormSpec):
        return spec
    text = spec.strip().lower().replace(" ", "")
    if text in _LAYERS:
        raise ValueError(
            f"{text!r} ({_LAYERS[text].description}) is a layer class of its own, not a (mean set, std set) pair; "
            f"build it with fedhn.norms.norm_layer({text!r})"
        )
    if "=" in text:
        return _parse_general(spec, text)
    if text in _FIXED:
        preset = _FIXED[text]
        return NormSpec(parse_pixel_sets(preset.mean), parse_pixel_sets(preset.std))
    match = _GROUPED_NAME.match(text)
    if match:
        preset = _GROUPED[match.group(1)]
        groups = match.group(2)
        return NormSpec(
            parse_pixel_sets(preset.mean.replace("<G>", groups)),
            parse_pixel_sets(preset.std.replace("<G>", groups)),
        )
    names = [p.name for p in PRESETS + LAYER_PRESETS]
    hint = difflib.get_close_matches(text, [n.replace("<G>", "8") for n in names], n=1, cutoff=0.5)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"Unknown norm {spec!r}. Use a preset ({', '.join(names)}; G = number of channel groups) "
        f"or the general form {_GENERAL_EXAMPLE!r}.{suggestion}"
    )


def _parse_general(spec: str, text: str) -> NormSpec:
    roles: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in ("mean", "std") or key in roles:
            raise ValueError(
                f"Cannot parse the norm spec {spec!r}: write 'mean=<sets>,std=<sets>', each role once, "
                f"e.g. {_GENERAL_EXAMPLE!r}"
            )
        roles[key] = value
    if set(roles) != {"mean", "std"}:
        missing = ({"mean", "std"} - set(roles)).pop()
        raise ValueError(
            f"The norm spec {spec!r} has no {missing} set; add '{missing}=<sets>', e.g. {_GENERAL_EXAMPLE!r}"
        )
    return NormSpec(parse_pixel_sets(roles["mean"]), parse_pixel_sets(roles["std"]))
