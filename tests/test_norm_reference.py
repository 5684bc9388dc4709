"""Heterologous layers against a direct NumPy implementation of eq. (1)-(2), running statistics and eval."""

import itertools

import numpy as np
import pytest
import torch

from fedhn.norms import HeterologousNorm, norm_layer
from tests.reference import heterologous_norm, set_stats

SETS = {
    "bn": (True, None),
    "in": (False, None),
    "ln": (False, 1),
    "gn_g4": (False, 4),
    "en": (True, 1),
    "en_g2": (True, 2),
}


def _input(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Channels with different means, as the pooled statistics of EN must handle.
    offsets = torch.linspace(-2, 3, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + offsets


@pytest.mark.parametrize(("mean", "std"), list(itertools.product(SETS, SETS)))
def test_every_mean_std_pair_matches_numpy(mean, std):
    x = _input((3, 8, 4, 5))
    layer = HeterologousNorm(8, mean, std).double()
    expected = heterologous_norm(x.numpy(), [SETS[mean]], [SETS[std]])
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(16, 8), (4, 8, 6), (2, 8, 3, 3), (2, 8, 2, 2, 2)])
def test_hn_accepts_fc_sequence_and_image_inputs(shape):
    x = _input(shape)
    layer = norm_layer("hn")(8).double()
    expected = heterologous_norm(x.numpy(), [SETS["bn"]], [SETS["en"]])
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("spec", "mean_sets", "std_sets"),
    [
        ("sn", ["bn", "in", "ln"], ["bn", "in", "ln"]),
        ("mean=bn,std=bn+en", ["bn"], ["bn", "en"]),
        ("mean=bn+en_g2,std=in+gn_g4+en", ["bn", "en_g2"], ["in", "gn_g4", "en"]),
    ],
)
def test_mixtures_combine_sets_with_softmax_weights(spec, mean_sets, std_sets):
    x = _input((4, 8, 3, 3))
    layer = norm_layer(spec)(8).double()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    mean_logits = layer.mean_logits.detach().numpy() if layer.mean_logits is not None else None
    expected = heterologous_norm(
        x.numpy(),
        [SETS[s] for s in mean_sets],
        [SETS[s] for s in std_sets],
        mean_logits=mean_logits,
        var_logits=layer.var_logits.detach().numpy(),
        weight=layer.weight.detach().numpy(),
        bias=layer.bias.detach().numpy(),
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_hn_running_stats_are_ema_of_channel_mean_and_unbiased_global_variance():
    layer = norm_layer("hn", momentum=0.3)(8).double()
    running_mean, running_var = np.zeros(8), np.ones(1)
    for step in range(4):
        x = _input((2, 8, 3, 3), seed=step)
        layer(x)
        x3 = x.numpy().reshape(2, 8, 9)
        running_mean = 0.7 * running_mean + 0.3 * x3.mean(axis=(0, 2))
        running_var = 0.7 * running_var + 0.3 * x3.var(ddof=1)
    np.testing.assert_allclose(layer.running_mean.numpy(), running_mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), running_var, rtol=1e-12)
    assert layer.num_batches_tracked.item() == 4
    assert not hasattr(layer, "running_var_center")


def test_cumulative_average_when_momentum_is_none():
    layer = norm_layer("hn_g2", momentum=None)(8).double()
    batches = [_input((2, 8, 3), seed=s) for s in range(3)]
    for x in batches:
        layer(x)
    expected = np.mean(
        [set_stats(x.numpy(), True, 2)[1][0, ::4, 0] * (2 * 4 * 3) / (2 * 4 * 3 - 1) for x in batches], axis=0
    )
    np.testing.assert_allclose(layer.running_var.numpy(), expected, rtol=1e-12)


def test_hn_eval_uses_running_group_variance():
    layer = norm_layer("hn_g2")(8).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.linspace(-1, 1, 8, dtype=torch.float64))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]))
    layer.eval()
    x = _input((1, 8, 2, 2))
    expected = (x.numpy() - np.linspace(-1, 1, 8)[None, :, None, None]) / np.sqrt(
        np.repeat([4.0, 0.25], 4)[None, :, None, None] + 1e-5
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12)
    assert layer.num_batches_tracked.item() == 0


def test_mixture_eval_uses_running_stats_for_batch_sets_and_input_for_per_sample_sets():
    layer = norm_layer("sn")(8).double()
    for seed in range(3):
        layer(_input((4, 8, 3, 3), seed=seed))
    layer.eval()
    x = _input((2, 8, 3, 3), seed=9)
    x3 = x.numpy().reshape(2, 8, 9)
    w = np.full(3, 1 / 3)
    rm, rv = layer.running_mean.numpy()[None, :, None], layer.running_var.numpy()[None, :, None]
    mean = w[0] * rm + w[1] * set_stats(x3, False, None)[0] + w[2] * set_stats(x3, False, 1)[0]
    var = w[0] * rv + w[1] * set_stats(x3, False, None)[1] + w[2] * set_stats(x3, False, 1)[1]
    expected = ((x3 - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("spec", ["mean=bn,std=bn+en", "mean=in,std=en", "mean=en_g2,std=en_g4"])
def test_running_var_center_tracks_each_std_groups_own_mean(spec):
    layer = norm_layer(spec, momentum=None)(8).double()
    batches = [_input((3, 8, 2), seed=s) for s in range(3)]
    for x in batches:
        layer(x)
    std_sets = [SETS[s] if s in SETS else (True, 4) for s in spec.split("std=")[1].split("+")]
    expected = np.concatenate(
        [np.mean([set_stats(x.numpy(), *s)[0][0, :: 8 // (s[1] or 8), 0] for x in batches], axis=0) for s in std_sets]
    )
    np.testing.assert_allclose(layer.running_var_center.numpy(), expected, rtol=1e-12)


def test_derived_center_equals_group_average_of_running_mean():
    """The convention the server relies on when a layer has no running_var_center buffer."""
    layer = norm_layer("hn_g2", momentum=0.2)(8).double()
    centers = np.zeros(2)
    for seed in range(4):
        x = _input((2, 8, 3), seed=seed)
        layer(x)
        centers = 0.8 * centers + 0.2 * set_stats(x.numpy(), True, 2)[0][0, ::4, 0]
    np.testing.assert_allclose(layer.running_mean.numpy().reshape(2, 4).mean(axis=1), centers, rtol=1e-12)


def test_eval_does_not_touch_running_stats():
    layer = norm_layer("hn")(8)
    layer(_input((4, 8, 3, 3)).float())
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    layer(_input((4, 8, 3, 3), seed=1).float())
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(value, state[key])


@pytest.mark.parametrize("spec", ["hn", "sn", "mean=bn,std=bn+en", "gn_g4", "en_g2"])
def test_state_dict_round_trip_restores_outputs(spec):
    source = norm_layer(spec)(8)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn(param.shape))
    for seed in range(2):
        source(_input((4, 8, 3, 3), seed=seed).float())
    target = norm_layer(spec)(8)
    target.load_state_dict(source.state_dict())
    x = _input((2, 8, 3, 3), seed=5).float()
    for mode in (True, False):
        source.train(mode)
        target.train(mode)
        torch.testing.assert_close(target(x), source(x))


def test_half_precision_input_keeps_its_dtype():
    layer = norm_layer("hn")(8)
    x = _input((2, 8, 3, 3)).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm_layer("hn")(8)(x.float()), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("spec", ["hn", "sn", "mean=in,std=en"])
def test_layers_converted_to_bfloat16_train_and_keep_their_buffer_dtype(spec):
    layer = norm_layer(spec)(8).to(torch.bfloat16)
    y = layer(_input((4, 8, 3, 3)).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert all(b.dtype in (torch.bfloat16, torch.int64) for b in layer.buffers())
