"""Batched augmentation on image tensors (no per-image PIL work)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["crop_flip"]


def crop_flip(images: Tensor, pad_value: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crops of the images padded by ``padding`` pixels, and random horizontal flips.

    Args:
        images: float images (B, C, H, W).
        pad_value: per-channel value of the padding (C,), e.g. black after normalization.
        generator: a CPU random source (the draws move to the images' device).
    """
    b, c, h, w = images.shape
    padded = pad_value.view(1, c, 1, 1).to(images).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = images
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(images.device)
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (offsets[1].view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    cols = torch.where(flip.view(b, 1, 1, 1), cols.flip(3), cols)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]
