"""Image datasets from a directory in torchvision's ImageFolder layout, with or without domains.

Layouts (``root`` is the ``dataset`` value; class folders hold the image files):

- ``root/<class>/*.jpg``: one domain; ``root/<domain>/<class>/*.jpg``: several domains, each with
  the same class folders (an error names the classes a domain lacks or adds).
- ``root/train/...`` and ``root/test/...`` (or ``root/val/...``), each in one of the layouts above:
  the given split; else each class of each domain is split with ``test_fraction`` and ``seed``.

Images are decoded with torchvision, their shorter side resized to ``image_size`` and
center-cropped, and kept as uint8 tensors in a cache file under ``cache_dir`` (never next to the
data), rebuilt when a file is added, removed or changed (the cache is keyed by every file's path,
mtime and size). Streamed (``stream``), they stay files decoded on demand (:class:`FolderImages`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

from fedhn.cache import user_cache_dir
from fedhn.data.images import FolderImages, channel_moments, read_batches

if TYPE_CHECKING:
    from fedhn.data.datasets import ImageData

__all__ = [
    "FolderIndex",
    "FolderOptions",
    "STATS_SAMPLE",
    "STREAM_ABOVE_BYTES",
    "cache_path",
    "load_image_folder",
    "scan_folder",
]

STATS_SAMPLE = 4096  # training images (a seeded sample) the normalization's channel mean and std come from
STREAM_ABOVE_BYTES = 4 * 2**30  # stream-data = auto streams when the decoded uint8 images would exceed this
_TEST_NAMES = ("test", "val")


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder is read (run-config keys ``image-size``, ``folder-test-fraction``,
    ``seed``, ``cache-dir``, ``stream-data``)."""

    image_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0
    cache_dir: str = ""
    stream: str = "auto"  # auto, true or false


@dataclass(frozen=True)
class Split:
    """Image files with their class and domain indices."""

    paths: tuple[str, ...]
    labels: np.ndarray
    domains: np.ndarray


@dataclass(frozen=True)
class FolderIndex:
    """What a folder holds: class and domain names (``()`` for one domain), the train and test files."""

    root: Path
    classes: tuple[str, ...]
    domains: tuple[str, ...]
    train: Split
    test: Split

    def fingerprint(self) -> str:
        """A digest of every file's path, mtime and size: changes when the data does."""
        digest = hashlib.sha256()
        for path in (*self.train.paths, *self.test.paths):
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, self.root)}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
        return digest.hexdigest()


def _subdirectories(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _holds_images(directory: Path) -> bool:
    return any(e.is_file() and has_file_allowed_extension(e.name, IMG_EXTENSIONS) for e in os.scandir(directory))


def _class_folders(directory: Path) -> tuple[list[str], list[str]]:
    """(domains, classes) of a directory in one of the two layouts; domains is [] for one domain."""
    folders = _subdirectories(directory)
    if not folders:
        raise ValueError(
            f"{directory} holds no folders: an image folder is root/<class>/*.jpg or root/<domain>/<class>/*.jpg"
        )
    if any(_holds_images(directory / name) for name in folders):
        return [], folders
    classes = {domain: _subdirectories(directory / domain) for domain in folders}
    first = folders[0]
    for domain, names in classes.items():
        if names != classes[first]:
            lacks, adds = sorted(set(classes[first]) - set(names)), sorted(set(names) - set(classes[first]))
            raise ValueError(
                f"{directory}: domain {domain!r} has other classes than domain {first!r} (lacks {lacks}, adds {adds}); "
                "every domain needs the same class folders"
            )
    if not classes[first]:
        raise ValueError(f"{directory / first} holds no class folders: expected {directory}/<domain>/<class>/*.jpg")
    return folders, classes[first]


def _scan(directory: Path) -> tuple[list[str], list[str], Split]:
    """Domains, classes and every image file of ``directory`` (sorted; torchvision's file rules)."""
    domains, classes = _class_folders(directory)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    paths, labels, domain_ids = [], [], []
    for domain_id, domain_dir in enumerate([directory / d for d in domains] or [directory]):
        for path, label in make_dataset(str(domain_dir), class_to_idx, extensions=IMG_EXTENSIONS):
            paths.append(path)
            labels.append(label)
            domain_ids.append(domain_id)
    split = Split(tuple(paths), np.asarray(labels, dtype=np.int64), np.asarray(domain_ids, dtype=np.int64))
    return domains, classes, split


def _seeded_split(split: Split, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Train and test: ``round(n * test_fraction)`` of each class of each domain to test (at least
    one example stays in train), chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    groups = split.domains * (split.labels.max() + 1) + split.labels
    test = np.zeros(len(groups), dtype=bool)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        count = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test[rng.permutation(members)[:count]] = True

    def subset(mask: np.ndarray) -> Split:
        index = np.flatnonzero(mask)
        return Split(tuple(split.paths[i] for i in index), split.labels[index], split.domains[index])

    return subset(~test), subset(test)


def scan_folder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> FolderIndex:
    """The layout, classes, domains and train/test files of the image folder ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a directory, or a class folder holds no image.
        ValueError: the layout is not an image folder's, domains (or train and test) disagree on classes,
            or the seeded split leaves no test image.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset directory {root.resolve()} does not exist; give an image folder "
            "(root/<class>/*.jpg or root/<domain>/<class>/*.jpg, optionally under train/ and test/)"
        )
    test_dir = next((root / name for name in _TEST_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        domains, classes, train = _scan(root / "train")
        test_domains, test_classes, test = _scan(test_dir)
        if (test_domains, test_classes) != (domains, classes):
            raise ValueError(
                f"{root}: train/ has domains {domains} and classes {classes}, but {test_dir.name}/ has domains "
                f"{test_domains} and classes {test_classes}; both need the same folders"
            )
    else:
        domains, classes, everything = _scan(root)
        train, test = _seeded_split(everything, test_fraction, seed)
        if not test.paths:
            raise ValueError(
                f"{root}: folder-test-fraction = {test_fraction} of each class leaves no test image; "
                "raise folder-test-fraction or give train/ and test/ folders"
            )
    return FolderIndex(root, tuple(classes), tuple(domains), train, test)


def cache_path(index: FolderIndex, options: FolderOptions, streamed: bool) -> Path:
    """The cache file of this folder read with these options (one per folder, size, split and mode)."""
    directory = Path(options.cache_dir).expanduser() if options.cache_dir else user_cache_dir() / "datasets"
    key = json.dumps([str(index.root.resolve()), options.image_size, options.test_fraction, options.seed, streamed])
    return directory / f"{index.root.resolve().name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def decoded_bytes(index: FolderIndex, image_size: int) -> int:
    """Bytes of the folder's images decoded as uint8 RGB tensors."""
    return (len(index.train.paths) + len(index.test.paths)) * 3 * image_size * image_size


def stats_sample(count: int, seed: int) -> Tensor:
    """Sorted indices of the (at most :data:`STATS_SAMPLE`) training images the channel statistics come from."""
    return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(count)[:STATS_SAMPLE]))


def channel_stats_of(images: Tensor | FolderImages, seed: int) -> tuple[Tensor, Tensor]:
    """Channel mean and std of the seeded sample of ``images``, read in the same batches either way."""
    batches = list(stats_sample(len(images), seed).split(256))
    return channel_moments(read_batches(images, batches))


def decode_all(paths: tuple[str, ...], image_size: int) -> Tensor:
    """Every image decoded (uint8, N x 3 x size x size), through the DataLoader's workers."""
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    batches = list(torch.arange(len(paths)).split(256))
    for batch, decoded in zip(batches, read_batches(FolderImages(paths, image_size), batches), strict=True):
        images[batch] = decoded
    return images


def _read_cache(path: Path, fingerprint: str) -> dict | None:
    """The cache file's content if it was made from the same files, else None (also when unreadable)."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("fingerprint") == fingerprint else None


def _write_cache(path: Path, content: dict) -> None:
    """Write atomically (a temporary file renamed): concurrent readers see the old file or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(content, temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(
            f"cannot write the image cache {path} ({error.strerror}); set cache-dir to a writable directory"
        ) from None


def _build_cache(index: FolderIndex, options: FolderOptions, streamed: bool, fingerprint: str) -> dict:
    """What the cache holds: the decoded images (unless streamed) and the channel statistics."""
    content: dict = {"fingerprint": fingerprint}
    if streamed:
        train: Tensor | FolderImages = FolderImages(index.train.paths, options.image_size)
    else:
        train = content["x_train"] = decode_all(index.train.paths, options.image_size)
        content["x_test"] = decode_all(index.test.paths, options.image_size)
    content["mean"], content["std"] = channel_stats_of(train, options.seed)
    return content


def load_image_folder(root: Path, options: FolderOptions) -> ImageData:
    """The image folder ``root`` as an :class:`ImageData` (uint8 tensors, or :class:`FolderImages`
    when streamed), from its cache when the files have not changed.

    Raises:
        FileNotFoundError, ValueError: see :func:`scan_folder`; OSError: the cache cannot be written.
    """
    from fedhn.data.datasets import ImageData

    index = scan_folder(root, options.test_fraction, options.seed)
    streamed = options.stream == "true" or (
        options.stream == "auto" and decoded_bytes(index, options.image_size) > STREAM_ABOVE_BYTES
    )
    path, fingerprint = cache_path(index, options, streamed), index.fingerprint()
    content = _read_cache(path, fingerprint)
    if content is None:
        content = _build_cache(index, options, streamed, fingerprint)
        _write_cache(path, content)
    if streamed:
        x_train = FolderImages(index.train.paths, options.image_size)
        x_test = FolderImages(index.test.paths, options.image_size)
    else:
        x_train, x_test = content["x_train"], content["x_test"]
    return ImageData(
        name=root.resolve().name,
        x_train=x_train,
        y_train=torch.from_numpy(index.train.labels),
        x_test=x_test,
        y_test=torch.from_numpy(index.test.labels),
        num_classes=len(index.classes),
        classes=index.classes,
        domains=index.domains,
        d_train=torch.from_numpy(index.train.domains),
        d_test=torch.from_numpy(index.test.domains),
        stats=(content["mean"], content["std"]),
    )
