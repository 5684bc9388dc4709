"""Local training: the batching rule for small partitions, learning-rate scaling, and that training learns."""

import pytest
import torch

from fedhn.models import build_model
from fedhn.training import client_lr, epoch_batches, evaluate, train


@pytest.mark.parametrize(
    ("examples", "batch_size", "sizes"),
    [(10, 4, [4, 4, 2]), (9, 4, [4, 5]), (3, 8, [3]), (1, 4, [1]), (8, 2, [2, 2, 2, 2])],
)
def test_epoch_batches_never_hold_a_single_example_when_avoidable(examples, batch_size, sizes):
    batches = epoch_batches(examples, batch_size, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == sizes
    assert sorted(torch.cat(batches).tolist()) == list(range(examples))


def test_linear_scaling_rule():
    assert client_lr(0.1, 2, "linear") == pytest.approx(0.1 * 2 / 128)
    assert client_lr(0.1, 2, "none") == 0.1


def test_training_on_separable_data_reaches_high_accuracy():
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.randn(64, 1, 8, 8) + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    model = build_model("resnet8", num_classes=2, norm="hn", in_channels=1, image_size=8)
    result = train(
        model,
        images,
        labels,
        batch_size=4,
        epochs=3,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert (result.steps, result.examples, result.batch_size) == (48, 192, 4)
    assert evaluate(model, images, labels)[1] > 0.95
