"""Feature-shift heterogeneity (run-config key ``feature-shift``): client groups see the same classes
through different fixed image transformations, FedBN's setting without a download.

A shift is a list of transformation names; client ``c`` belongs to group ``c mod len(shift)`` and
all its images (training and local test) go through that group's transformation once, on the raw
uint8 images, before normalization. Each transformation's strength is drawn once per run from
``seed`` (the same for every client of the group and for the central test set, which is evaluated
once per transformation). Transformations run on torchvision's tensor kernels.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from fedhn.seeding import rng, torch_generator

__all__ = ["AUTO", "TRANSFORMS", "FeatureShift", "parse_feature_shift", "feature_shift_problem"]


def _contrast(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    return TF.adjust_contrast(images, 0.6 - 0.3 * strength)  # factor in [0.3, 0.6]: flatter images


def _brightness(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    return TF.adjust_brightness(images, 1.4 + 0.4 * strength)  # factor in [1.4, 1.8]: brighter, saturating


def _invert(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    return TF.invert(images)


def _grayscale(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    if images.shape[1] != 3:
        return images  # one-channel images are gray already
    return TF.rgb_to_grayscale(images, num_output_channels=3)


def _blur(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    sigma = 0.8 + 0.7 * strength  # in [0.8, 1.5] pixels
    size = min(2 * round(2 * sigma) + 1, images.shape[-1] - (images.shape[-1] + 1) % 2)
    return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


def _noise(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    std = 20.0 + 20.0 * strength  # in [20, 40] of 255: fixed per image (drawn once, with the run's seed)
    noise = torch.randn(images.shape, generator=generator) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _rotation(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    return TF.rotate(images, 30.0 + 30.0 * strength)  # in [30, 60] degrees, zero fill


# name -> (the transformation of uint8 N x C x H x W images given a strength in [0, 1], what it does)
TRANSFORMS: dict[str, tuple[Callable[[Tensor, float, torch.Generator], Tensor], str]] = {
    "contrast": (_contrast, "contrast scaled by a factor in [0.3, 0.6]"),
    "brightness": (_brightness, "brightness scaled by a factor in [1.4, 1.8] (saturating)"),
    "invert": (_invert, "colour inversion (255 - x)"),
    "grayscale": (_grayscale, "RGB to gray, kept as 3 channels (one-channel images are unchanged)"),
    "blur": (_blur, "Gaussian blur, sigma in [0.8, 1.5] pixels"),
    "noise": (_noise, "additive Gaussian noise, std in [20, 40] of 255, fixed per image"),
    "rotation": (_rotation, "rotation by an angle in [30, 60] degrees"),
}
AUTO: tuple[str, ...] = tuple(TRANSFORMS)
"""What ``feature-shift = "auto"`` means: every transformation, one client group each."""


def parse_feature_shift(value: str) -> tuple[str, ...]:
    """The transformation names of a ``feature-shift`` value (``()`` for ``none``).

    Raises:
        ValueError: an unknown name, with the nearest valid one and the valid list.
    """
    if value == "none":
        return ()
    if value == "auto":
        return AUTO
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    for name in names:
        if name not in TRANSFORMS:
            nearest = difflib.get_close_matches(name, list(TRANSFORMS), n=1, cutoff=0.4)
            raise ValueError(
                f"unknown transformation {name!r}"
                + (f" (nearest: {nearest[0]!r})" if nearest else "")
                + f"; use none, auto or a comma-separated list of {', '.join(TRANSFORMS)}"
            )
    if not names:
        raise ValueError(f"give none, auto or a comma-separated list of {', '.join(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{value!r} names a transformation twice; each client group needs its own")
    return names


def feature_shift_problem(value: str) -> str | None:
    """The run-config check of ``feature-shift``: what is wrong with ``value``, or None."""
    try:
        parse_feature_shift(value)
    except ValueError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class FeatureShift:
    """The transformations of one run: ``names`` (one per client group) with strengths drawn from ``seed``."""

    names: tuple[str, ...]
    seed: int = 0

    def group_of(self, client: int) -> str | None:
        """The transformation of client ``client``, or None without a shift."""
        return self.names[client % len(self.names)] if self.names else None

    def apply(self, name: str, images: Tensor, part: str | int) -> Tensor:
        """``images`` (uint8 N x C x H x W) through transformation ``name``; ``part`` names the images
        (a client id, or ``"test"``) so that per-image noise differs between them but not between runs."""
        transform = TRANSFORMS[name][0]
        strength = rng("feature-shift", self.seed, name).random()
        return transform(images, strength, torch_generator("feature-shift", self.seed, name, part))
