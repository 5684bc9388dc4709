"""Pixel sets: the pixels a normalization statistic is computed over.

Every set of the family is described by two facts about a feature map of shape (N, C, *spatial):
whether it pools over the samples of the batch, and into how many groups of consecutive channels it
splits C. Pooling over the spatial positions is implied for every set.

| name      | over the batch | channel groups | the paper's set |
|-----------|----------------|----------------|-----------------|
| `bn`      | yes            | C (one each)   | U_C             |
| `in`      | no             | C (one each)   | U_C ∩ U_N       |
| `ln`      | no             | 1              | U_N             |
| `gn_g<G>` | no             | G              | U_G ∩ U_N       |
| `en_g<G>` | yes            | G              | U_G             |

`gn` is `gn_g32` and `en` is `en_g1` (the universal set U). `en_g<C>` is `bn` and `gn_g<C>` is `in`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

__all__ = ["PixelSet", "parse_pixel_set", "parse_pixel_sets", "SET_NAMES"]

DEFAULT_GN_GROUPS = 32
SET_NAMES = ("bn", "in", "ln", "gn", "en", "gn_g<G>", "en_g<G>")
_GROUPED = re.compile(r"^(gn|en)_g(\d+)$")


@dataclass(frozen=True)
class PixelSet:
    """A pixel set of the normalization family.

    Args:
        over_batch: statistics are pooled over the samples of the batch (they need running
            estimates for inference).
        groups: number of groups of consecutive channels; ``None`` means one group per channel.
    """

    over_batch: bool
    groups: int | None

    @property
    def name(self) -> str:
        """The canonical spec name of the set."""
        if self.groups is None:
            return "bn" if self.over_batch else "in"
        if self.over_batch:
            return "en" if self.groups == 1 else f"en_g{self.groups}"
        if self.groups == 1:
            return "ln"
        return "gn" if self.groups == DEFAULT_GN_GROUPS else f"gn_g{self.groups}"

    def num_groups(self, channels: int) -> int:
        """Number of channel groups for a layer of ``channels`` channels.

        Raises:
            ValueError: the groups do not divide the channels (the message lists the counts that do).
        """
        if self.groups is None:
            return channels
        if channels % self.groups:
            divisors = ", ".join(str(d) for d in range(1, channels + 1) if channels % d == 0)
            raise ValueError(
                f"{self.name} splits the channels into {self.groups} groups, but {channels} channels "
                f"are not divisible by {self.groups}; {channels} channels divide into {divisors} groups"
            )
        return self.groups

    def resolve(self, channels: int) -> PixelSet:
        """The same set with an explicit group count for ``channels`` channels.

        One group per channel is written as ``groups=None``, so ``en_g<C>`` resolves to ``bn`` and
        ``gn_g<C>`` to ``in``: equal sets compare equal.
        """
        groups = self.num_groups(channels)
        return PixelSet(self.over_batch, None if groups == channels else groups)

    def __str__(self) -> str:
        return self.name


def parse_pixel_set(name: str) -> PixelSet:
    """Parse one set name (``bn``, ``in``, ``ln``, ``gn``, ``en``, ``gn_g<G>``, ``en_g<G>``)."""
    key = name.strip().lower()
    fixed = {
        "bn": PixelSet(True, None),
        "in": PixelSet(False, None),
        "ln": PixelSet(False, 1),
        "gn": PixelSet(False, DEFAULT_GN_GROUPS),
        "en": PixelSet(True, 1),
    }
    if key in fixed:
        return fixed[key]
    match = _GROUPED.match(key)
    if match:
        groups = int(match.group(2))
        if groups < 1:
            raise ValueError(f"{name!r} asks for {groups} channel groups; use at least 1, e.g. {match.group(1)}_g8")
        return PixelSet(match.group(1) == "en", groups)
    hint = difflib.get_close_matches(key, ["bn", "in", "ln", "gn", "en", "gn_g8", "en_g8"], n=1, cutoff=0.5)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"Unknown pixel set {name!r}. Valid sets: {', '.join(SET_NAMES)} "
        f"(G = number of channel groups, e.g. en_g8).{suggestion}"
    )


def parse_pixel_sets(text: str) -> tuple[PixelSet, ...]:
    """Parse a ``+``-joined mixture of sets, e.g. ``bn+in+ln``."""
    parts = text.split("+")
    if not text.strip() or any(not part.strip() for part in parts):
        raise ValueError(f"Cannot parse the pixel-set mixture {text!r}: write sets joined by '+', e.g. bn+en")
    sets = tuple(parse_pixel_set(part) for part in parts)
    if len(set(sets)) != len(sets):
        raise ValueError(f"The mixture {text!r} names the same set twice; list each set once, e.g. bn+en")
    return sets
