"""FixBN: a norm layer with frozen statistics trains exactly as it evaluates, and its statistics stay."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fedhn.models import build_model
from fedhn.norms import HeterologousNorm, freeze_statistics, frozen_layers, norm_layer, statistics_layers

FROZEN_NORMS = ("bn", "en", "hn", "hn_g4", "mean=bn,std=bn+en", "sn")


def _layer_with_statistics(spec: str, channels: int = 8) -> HeterologousNorm:
    """A layer whose running statistics, affine parameters and mixture weights are away from their defaults."""
    torch.manual_seed(0)
    layer = norm_layer(spec)(channels).double()
    layer.train()
    for _ in range(3):
        layer(torch.randn(6, channels, 5, 5, dtype=torch.float64) * 3 + 1)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return layer


def _output_and_grads(layer: HeterologousNorm, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), [x.grad] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("spec", FROZEN_NORMS)
def test_frozen_layer_in_train_mode_equals_the_layer_in_eval_mode(spec):
    frozen = _layer_with_statistics(spec)
    evaluated = copy.deepcopy(frozen).eval()
    freeze_statistics(frozen).train()
    before = {key: value.clone() for key, value in frozen.state_dict().items()}
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64) * 2 - 1
    y, grads = _output_and_grads(frozen, x)
    expected_y, expected_grads = _output_and_grads(evaluated, x)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=1e-12)
    for got, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for key, value in frozen.state_dict().items():
        if key not in ("weight", "bias", "mean_logits", "var_logits"):
            assert torch.equal(value, before[key]), f"{key} changed in a frozen step"
    unfrozen = freeze_statistics(copy.deepcopy(frozen), frozen=False)
    unfrozen(x)  # the same layer unfrozen trains on batch statistics again: the statistics move
    assert not torch.equal(unfrozen.running_var, before["running_var"])
    assert not torch.allclose(unfrozen(x), expected_y)


@pytest.mark.parametrize("spec", ("bn", "hn", "hn_g4", "mean=bn,std=bn+en"))
def test_frozen_layers_take_no_fused_or_native_training_kernel(spec, monkeypatch):
    layer = _layer_with_statistics(spec).float()
    calls = {"fused": 0, "batch_norm_training": 0}

    def spy(name, function, training_arg=None):
        def wrapped(*args, **kwargs):
            if training_arg is None or args[training_arg]:
                calls[name] += 1
            return function(*args, **kwargs)

        return wrapped

    import fedhn.norms.layers as layers

    monkeypatch.setattr(layers, "fused_norm", spy("fused", layers.fused_norm))
    monkeypatch.setattr(F, "batch_norm", spy("batch_norm_training", F.batch_norm, 5))
    x = torch.randn(4, 8, 5, 5)
    layer.train()(x)
    trained = dict(calls)
    assert sum(trained.values()) == 1  # unfrozen: one training kernel (fused for hn family, native for bn)
    freeze_statistics(layer)(x)
    assert calls == trained  # frozen: neither


def test_frozen_layer_normalizes_a_batch_of_one():
    layer = freeze_statistics(_layer_with_statistics("hn")).train()
    x = torch.randn(1, 8, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(layer(x), copy.deepcopy(layer).eval()(x))
    with pytest.raises(ValueError, match="single value per group"):
        freeze_statistics(layer, frozen=False)(x)


def test_freeze_statistics_covers_the_layers_with_running_statistics_of_a_model():
    model = build_model("resnet8", 4, "hn", 3)
    names = statistics_layers(model)
    assert len(names) == 9 and frozen_layers(model) == []
    assert frozen_layers(freeze_statistics(model)) == names
    assert frozen_layers(freeze_statistics(model, frozen=False)) == []
    assert "stats_frozen" not in str(model.state_dict().keys())


def test_a_model_without_running_statistics_cannot_be_frozen():
    with pytest.raises(ValueError, match="no norm layer with running statistics"):
        freeze_statistics(build_model("resnet8", 4, "gn_g4", 3))
