"""Datasets as tensors, partitions through flwr-datasets, batch sizes and batched augmentation."""

import numpy as np
import pytest
import torch

from fedhn.data import assign_batch_sizes, crop_flip, load_dataset, partition_indices


def test_digits_is_embedded_and_split_stratified():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == torch.uint8 and data.num_classes == 10
    assert set(torch.bincount(data.y_test).tolist()) <= {35, 36, 37}


def test_npz_loads_as_nchw_and_normalizes_per_channel(tiny_npz):
    data = load_dataset(str(tiny_npz))
    assert data.x_train.shape == (96, 3, 8, 8) and data.num_classes == 4
    normalized = data.normalized(data.x_train)
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match=r"not in data-dir .*cifar-10-batches-py.*local \.npz"):
        load_dataset("cifar10", str(tmp_path))


def test_iid_partitions_cover_every_example_once():
    labels = np.arange(103) % 10
    parts = partition_indices(labels, 7, "iid")
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partitions_are_seeded_and_skewed():
    labels = np.arange(2000) % 10
    first = partition_indices(labels, 5, "dirichlet", seed=1, dirichlet_alpha=0.1)
    again = partition_indices(labels, 5, "dirichlet", seed=1, dirichlet_alpha=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert sorted(np.concatenate(first).tolist()) == list(range(2000))
    assert max(np.bincount(labels[p], minlength=10).max() / len(p) for p in first) > 0.4


def test_pathological_partitions_hold_the_given_number_of_classes():
    labels = np.arange(1000) % 10
    for part in partition_indices(labels, 10, "pathological", classes_per_partition=2):
        assert len(np.unique(labels[part])) == 2


def test_more_partitions_than_examples_is_refused():
    with pytest.raises(ValueError, match="5 partitions but only 3"):
        partition_indices(np.zeros(3), 5)


def test_batch_sizes_cycle_or_are_drawn_with_a_seed():
    assert assign_batch_sizes(5, (2, 8)) == [2, 8, 2, 8, 2]
    drawn = assign_batch_sizes(50, (2, 8, 32), "random", seed=3)
    assert drawn == assign_batch_sizes(50, (2, 8, 32), "random", seed=3) and set(drawn) == {2, 8, 32}


def test_crop_flip_shifts_content_and_pads_with_the_given_value():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    pad = torch.tensor([-1.0, -2.0, -3.0])
    out = crop_flip(images, pad, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape
    for b in range(2):
        for c in range(3):
            values = set(out[b, c].flatten().tolist())
            assert values <= set(images[b, c].flatten().tolist()) | {pad[c].item()}
    # Over many draws the unshifted image appears both as it is and mirrored.
    many = crop_flip(images[:1].expand(400, 3, 4, 4), torch.zeros(3), torch.Generator().manual_seed(1), padding=1)
    assert any(torch.equal(m, images[0]) for m in many)
    assert any(torch.equal(m, images[0].flip(2)) for m in many)
