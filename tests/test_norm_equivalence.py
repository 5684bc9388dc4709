"""Homologous presets behave exactly like PyTorch's own layers."""

import pytest
import torch
from torch import nn

from fedhn.norms import norm_layer


def _copy_affine(ours: nn.Module, theirs: nn.Module) -> None:
    with torch.no_grad():
        weight, bias = torch.randn(ours.num_features), torch.randn(ours.num_features)
        for layer in (ours, theirs):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def _assert_same_steps(ours: nn.Module, theirs: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """Outputs and gradients (input, weight, bias) agree over several training steps, then in eval."""
    _copy_affine(ours, theirs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = (torch.randn(shape, generator=generator) * 3 + 1).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        grad_out = torch.randn(shape, generator=generator)
        y, y_ref = ours(x), theirs(x_ref)
        torch.testing.assert_close(y, y_ref)
        y.backward(grad_out)
        y_ref.backward(grad_out)
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    ("shape", "reference"),
    [
        ((4, 6, 5, 5), nn.BatchNorm2d),
        ((2, 6, 3, 3), nn.BatchNorm2d),
        ((8, 6), nn.BatchNorm1d),
        ((4, 6, 7), nn.BatchNorm1d),
    ],
)
def test_bn_matches_batchnorm(shape, reference, momentum):
    ours, theirs = norm_layer("bn", momentum=momentum)(6), reference(6, momentum=momentum)
    _assert_same_steps(ours, theirs, shape)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked.dtype == torch.int64
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 3


@pytest.mark.parametrize(
    ("spec", "reference"),
    [
        ("gn", lambda c: nn.GroupNorm(32, c)),
        ("gn_g4", lambda c: nn.GroupNorm(4, c)),
        ("ln", lambda c: nn.GroupNorm(1, c)),
        ("in", lambda c: nn.InstanceNorm2d(c, affine=True)),
    ],
)
def test_per_sample_presets_match_pytorch(spec, reference):
    _assert_same_steps(norm_layer(spec)(64), reference(64), (3, 64, 4, 4))


def test_bn_state_dict_is_batchnorm2d_state_dict():
    theirs = nn.BatchNorm2d(5)
    theirs(torch.randn(4, 5, 3, 3))
    ours = norm_layer("bn")(5)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_en_with_one_group_per_channel_is_bn():
    torch.manual_seed(1)
    x = torch.randn(4, 8, 3, 3)
    en, bn = norm_layer("en_g8")(8), nn.BatchNorm2d(8)
    torch.testing.assert_close(en(x), bn(x))
    torch.testing.assert_close(en.running_var, bn.running_var)
