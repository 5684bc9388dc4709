"""Image datasets as uint8 tensors: the embedded digits, torchvision's, or a local .npz."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageData", "DATASETS", "load_dataset"]


@dataclass(frozen=True)
class ImageData:
    """Train and test images (uint8, N x C x H x W) with int64 labels, and the train set's
    per-channel mean and std (in [0, 1] units) for global normalization."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[2]

    @functools.cached_property
    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        pixels = self.x_train.transpose(0, 1).reshape(self.channels, -1).double() / 255
        return pixels.mean(dim=1).float(), pixels.std(dim=1).float()

    def normalized(self, images: Tensor) -> Tensor:
        """Float32 images with the training set's channel mean and std removed."""
        mean, std = self.channel_stats
        return (images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _from_arrays(name: str, x_train, y_train, x_test, y_test) -> ImageData:
    def images(x: np.ndarray) -> Tensor:
        x = np.asarray(x)
        if x.ndim == 3:  # N x H x W: one channel
            x = x[..., None]
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"{name}: images must be uint8 N x H x W x C, got {x.dtype} with shape {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    y_train, y_test = (torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in (y_train, y_test))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return ImageData(name, images(x_train), y_train, images(x_test), y_test, num_classes)


def _digits(data_dir: Path) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return _from_arrays("digits", x_train, y_train, x_test, y_test)


def _torchvision(name: str, cls_name: str, expected: str) -> Callable[[Path], ImageData]:
    def load(data_dir: Path) -> ImageData:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            train, test = (cls(str(data_dir), train=flag, download=True) for flag in (True, False))
        except Exception as error:  # torchvision raises URLError, RuntimeError, ... when it cannot download
            raise FileNotFoundError(
                f"Dataset {name} is not in data-dir {data_dir.resolve()} (expected {data_dir / expected}) and "
                f"could not be downloaded ({type(error).__name__}: {error}). Download it where there is internet "
                "and copy it there, set data-dir to where it is, or set dataset to a local .npz "
                "(x_train, y_train, x_test, y_test)."
            ) from None
        return _from_arrays(name, train.data, train.targets, test.data, test.targets)

    return load


def _npz(path: Path) -> ImageData:
    if not path.is_file():
        raise FileNotFoundError(
            f"Dataset file {path.resolve()} does not exist; give the path of a .npz with x_train, y_train, x_test, y_test"
        )
    with np.load(path) as archive:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: the archive lacks {sorted(missing)}; it needs x_train, y_train, x_test, y_test")
        return _from_arrays(path.stem, archive["x_train"], archive["y_train"], archive["x_test"], archive["y_test"])


# name -> (loader(data_dir), augmentation used by augment=auto)
DATASETS: dict[str, tuple[Callable[[Path], ImageData], str]] = {
    "digits": (_digits, "none"),
    "cifar10": (_torchvision("cifar10", "CIFAR10", "cifar-10-batches-py/"), "crop-flip"),
    "cifar100": (_torchvision("cifar100", "CIFAR100", "cifar-100-python/"), "crop-flip"),
    "mnist": (_torchvision("mnist", "MNIST", "MNIST/raw/train-images-idx3-ubyte"), "none"),
    "fashion-mnist": (_torchvision("fashion-mnist", "FashionMNIST", "FashionMNIST/raw/"), "none"),
}


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str = "data") -> ImageData:
    """Load a dataset by name (see :data:`DATASETS`) or from a ``.npz`` path; cached per process."""
    if name in DATASETS:
        return DATASETS[name][0](Path(data_dir))
    if name.endswith(".npz"):
        return _npz(Path(name))
    raise ValueError(f"Unknown dataset {name!r}: use {', '.join(DATASETS)} or a path to a .npz")
