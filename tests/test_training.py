"""Local training: the batching rule for small partitions, learning-rate scaling, and that training learns."""

import copy

import pytest
import torch
import torch.nn.functional as F

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


def test_learning_rate_scaling_rules():
    assert client_lr(0.1, 2, "linear") == 0.1 * 2 / 128
    assert client_lr(0.4, 8, "sqrt") == pytest.approx(0.1)  # sqrt(8 / 128) = 1/4
    assert client_lr(0.4, 128, "sqrt") == 0.4
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


def _separable(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    labels = torch.arange(n) % 2
    return torch.randn(n, 1, 8, 8) + (labels.float() * 2 - 1).view(-1, 1, 1, 1), labels


@pytest.mark.parametrize(("norm", "fused"), [("bn", None), ("hn", None), ("hn", False)])
def test_train_is_sgd_with_momentum_and_weight_decay_over_the_epoch_batches(norm, fused):
    images, labels = _separable()
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=2, norm=norm, in_channels=1, image_size=8)
    reference = copy.deepcopy(model)
    settings = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
    result = train(
        model,
        images,
        labels,
        batch_size=5,
        epochs=2,
        generator=torch.Generator().manual_seed(3),
        fused=fused,
        **settings,
    )

    optimizer = torch.optim.SGD(reference.parameters(), foreach=False, **settings)  # PyTorch's plain loop
    generator, losses = torch.Generator().manual_seed(3), []
    reference.train()
    for _ in range(2):
        for index in epoch_batches(len(images), 5, generator):
            loss = F.cross_entropy(reference(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())

    assert (result.steps, result.examples, result.batch_size) == (len(losses), 48, 5)
    assert result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    for (key, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)


def test_training_is_deterministic_for_a_seed():
    images, labels = _separable()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("resnet8", num_classes=2, norm="hn", in_channels=1, image_size=8)
        train(
            model,
            images,
            labels,
            batch_size=2,
            epochs=1,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            generator=torch.Generator().manual_seed(1),
        )
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)


def test_lr_factor_sets_each_steps_learning_rate():
    images, labels = _separable()
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=2, norm="bn", in_channels=1, image_size=8)
    reference = copy.deepcopy(model)
    factor = lambda step: 1.0 / (1 + step)  # noqa: E731
    train(
        model, images, labels, batch_size=8, epochs=2, lr=0.1, momentum=0.9, weight_decay=0.0,
        generator=torch.Generator().manual_seed(1), lr_factor=factor,
    )  # fmt: skip

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, foreach=False)
    generator, step = torch.Generator().manual_seed(1), 0
    reference.train()
    for _ in range(2):
        for index in epoch_batches(len(images), 8, generator):
            optimizer.param_groups[0]["lr"] = 0.1 * factor(step)
            loss = F.cross_entropy(reference(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    for (key, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)
