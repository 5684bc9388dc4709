"""Data: datasets as tensors (or image files streamed from disk), client partitions, batch sizes and batched augmentation."""

from fedhn.data.augment import crop_flip
from fedhn.data.datasets import DATASETS, FolderOptions, ImageData, is_folder_path, load_dataset
from fedhn.data.images import FolderImages, read_batches
from fedhn.data.partition import assign_batch_sizes, domain_partition_indices, partition_indices

__all__ = [
    "DATASETS",
    "FolderImages",
    "FolderOptions",
    "ImageData",
    "assign_batch_sizes",
    "crop_flip",
    "domain_partition_indices",
    "is_folder_path",
    "load_dataset",
    "partition_indices",
    "read_batches",
]
