"""Images as uint8 tensors, or as image files decoded on demand through a DataLoader
(:class:`FolderImages`, for data larger than memory), with one normalization and one batch reader
for both, so that both paths give the same float images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional  # imported here, so that DataLoader workers inherit it

__all__ = ["FolderImages", "STREAM_WORKERS", "channel_moments", "decode_file", "normalize", "read_batches"]

STREAM_WORKERS = 2  # DataLoader worker processes decoding streamed images


def decode_file(path: str, size: int) -> Tensor:
    """The image at ``path`` as uint8 RGB (3, size, size): its shorter side resized to ``size``
    (antialiased), then center-cropped."""
    image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    return functional.center_crop(functional.resize(image, size, antialias=True), [size, size])


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Float32 images of uint8 ``images`` in [0, 1] units with the per-channel ``mean`` and ``std`` removed."""
    return (images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_moments(batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std, in [0, 1] units, of the pixels of uint8 image batches (float64 sums)."""
    count, total, squares = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in batches:
        pixels = batch.transpose(0, 1).reshape(batch.shape[1], -1).double() / 255
        count, total, squares = count + pixels.shape[1], total + pixels.sum(1), squares + pixels.square().sum(1)
    mean = total / count
    variance = (squares - count * mean.square()) / (count - 1)
    return mean.float(), variance.clamp_min(0).sqrt().float()


class _Decoded(Dataset):
    """Item i: the decoded image of file i."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return decode_file(self.paths[index], self.size)


@dataclass(frozen=True)
class FolderImages:
    """Images kept as their files and decoded when read: indexed (``images[index]``), normalized
    and moved (``.to(device)``) without reading anything, like a tensor, then read batch by batch
    with :func:`read_batches` through a DataLoader with :data:`STREAM_WORKERS` decoding workers."""

    paths: tuple[str, ...]
    image_size: int
    mean: Tensor | None = None  # normalization applied when read; None: uint8 images
    std: Tensor | None = None
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.paths), 3, self.image_size, self.image_size

    def __getitem__(self, index: Tensor | np.ndarray | slice) -> FolderImages:
        positions = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).tolist()
        return replace(self, paths=tuple(self.paths[i] for i in positions))

    def normalized(self, mean: Tensor, std: Tensor) -> FolderImages:
        return replace(self, mean=mean, std=std)

    def to(self, device: torch.device | str) -> FolderImages:
        return replace(self, device=torch.device(device))

    def batches(self, index_batches: Sequence[Sequence[int]]) -> Iterator[Tensor]:
        """The images of each index batch, decoded by the DataLoader's workers ahead of use."""
        workers = min(STREAM_WORKERS, len(index_batches))
        loader = DataLoader(
            _Decoded(self.paths, self.image_size),
            batch_sampler=index_batches,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            images = normalize(batch, self.mean, self.std) if self.mean is not None else batch
            yield images.to(self.device, non_blocking=True)


def read_batches(images: Tensor | FolderImages, batches: Sequence[Tensor | slice]) -> Iterator[Tensor]:
    """The images of each batch (index tensors or slices), in order: the tensor's rows, or the
    files decoded through a DataLoader."""
    if isinstance(images, Tensor):
        for batch in batches:
            yield images[batch.to(images.device) if isinstance(batch, Tensor) else batch]
        return
    ranges = [range(len(images))[b] if isinstance(b, slice) else b.tolist() for b in batches]
    yield from images.batches([list(r) for r in ranges])
