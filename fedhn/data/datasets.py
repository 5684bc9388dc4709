"""Image datasets as uint8 tensors: the embedded digits, torchvision's, a local .npz, or an image
folder (:mod:`fedhn.data.image_folder`, with domains, optionally streamed from disk)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedhn.data.image_folder import FolderOptions, load_image_folder
from fedhn.data.images import FolderImages, channel_moments, normalize, read_batches

__all__ = ["ImageData", "DATASETS", "FolderOptions", "is_folder_path", "load_dataset"]


@dataclass(frozen=True)
class ImageData:
    """Train and test images (uint8, N x C x H x W, or image files read on demand when streamed)
    with int64 labels, and the train set's per-channel mean and std (in [0, 1] units) for global
    normalization. Image folders also name their classes and domains (``d_train``, ``d_test``: each
    example's domain index) and bring their channel statistics (``stats``, of a seeded sample)."""

    name: str
    x_train: Tensor | FolderImages
    y_train: Tensor
    x_test: Tensor | FolderImages
    y_test: Tensor
    num_classes: int
    classes: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()  # () for data of one domain
    d_train: Tensor | None = None
    d_test: Tensor | None = None
    stats: tuple[Tensor, Tensor] | None = None

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[2]

    @functools.cached_property
    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training images (``stats`` when given), in [0, 1] units."""
        if self.stats is not None:
            return self.stats
        return channel_moments(read_batches(self.x_train, list(torch.arange(len(self.x_train)).split(4096))))

    @property
    def streamed(self) -> bool:
        """Whether the images are files read on demand (:class:`FolderImages`) rather than tensors."""
        return isinstance(self.x_train, FolderImages)

    def normalized(self, images: Tensor | FolderImages) -> Tensor | FolderImages:
        """Float32 images with the training set's channel mean and std removed (streamed: when read)."""
        mean, std = self.channel_stats
        return images.normalized(mean, std) if isinstance(images, FolderImages) else normalize(images, mean, std)


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
def load_dataset(name: str, data_dir: str = "data", folder: FolderOptions | None = None) -> ImageData:
    """Load a dataset by name (see :data:`DATASETS`), from a ``.npz`` path, or from an image folder
    (any other path, read with ``folder``, default :class:`FolderOptions`); cached per process."""
    if name in DATASETS:
        return DATASETS[name][0](Path(data_dir))
    if name.endswith(".npz"):
        return _npz(Path(name))
    if is_folder_path(name):
        return load_image_folder(Path(name).expanduser(), folder or FolderOptions())
    raise ValueError(
        f"Unknown dataset {name!r}: use {', '.join(DATASETS)}, a path to a .npz or the path of an image folder"
    )


def is_folder_path(name: str) -> bool:
    """Whether a ``dataset`` value names an image folder: a path (with a ``/``) that is no ``.npz``."""
    return "/" in name and not name.endswith(".npz")
