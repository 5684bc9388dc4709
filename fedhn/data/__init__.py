"""Data: datasets as tensors, client partitions, batch sizes and batched augmentation."""

from fedhn.data.augment import crop_flip
from fedhn.data.datasets import DATASETS, ImageData, load_dataset
from fedhn.data.partition import assign_batch_sizes, partition_indices

__all__ = ["DATASETS", "ImageData", "assign_batch_sizes", "crop_flip", "load_dataset", "partition_indices"]
