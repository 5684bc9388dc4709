"""FedWon's pieces: no norm, scaled weight-standardized convolutions, SkipInit gains, adaptive gradient clipping."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedhn.clipping import AdaptiveClipping, adaptive_clip_, classifier_name
from fedhn.folding import fold_norms
from fedhn.models import build_model
from fedhn.models.norm_free import RELU_GAMMA, ResidualGain, WSConv2d, standardize_weight
from fedhn.norms import is_norm, replace_norms
from fedhn.training import train


@pytest.fixture(autouse=True)
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def _reference_standardized(weight: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Scaled WS written from the formula, one output channel at a time: gamma * g * (W - mean) / (std * sqrt(fan_in)),
    gamma = 1 / std(relu(z)) for z ~ N(0, 1), from var(relu(z)) = 1/2 - 1/(2 pi)."""
    gamma = 1 / math.sqrt(0.5 - 0.5 / math.pi)
    out = np.empty_like(weight)
    for o in range(weight.shape[0]):
        w = weight[o]
        out[o] = gamma * gain[o] * (w - w.mean()) / (w.std() * math.sqrt(w.size))
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_ws_conv_equals_the_formula(groups):
    torch.manual_seed(0)
    conv = WSConv2d(4, 6, 3, padding=1, groups=groups, bias=True)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
    expected = _reference_standardized(conv.weight.detach().numpy(), conv.gain.detach().numpy())
    np.testing.assert_allclose(conv.standardized_weight().detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 4, 5, 5)
    reference = F.conv2d(x, torch.from_numpy(expected), conv.bias, padding=1, groups=groups)
    torch.testing.assert_close(conv(x), reference, rtol=0, atol=1e-12)


def test_ws_conv_weight_has_unit_fan_in_variance_and_gradients_check():
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    gain = torch.rand(3, requires_grad=True) + 0.5
    standardized = standardize_weight(weight, torch.ones(3), gamma=1.0)
    torch.testing.assert_close(standardized.mean((1, 2, 3)), torch.zeros(3), rtol=0, atol=1e-12)
    torch.testing.assert_close(standardized.var((1, 2, 3), unbiased=False) * 18, torch.ones(3), rtol=0, atol=1e-9)
    assert torch.autograd.gradcheck(lambda w, g: standardize_weight(w, g, gamma=RELU_GAMMA), (weight, gain))


def _variance_after_ws_relu_layers(depth: int, **ws) -> float:
    torch.manual_seed(0)
    x = torch.randn(16, 32, 16, 16)
    for _ in range(depth):
        x = WSConv2d(32, 32, 3, padding=1, bias=False, **ws)(torch.relu(x))
    return float(x.var())


@torch.no_grad()
def test_relu_gamma_keeps_the_activation_variance_through_depth():
    """NF-ResNets' point: with gamma, ws conv + ReLU layers keep unit variance at init; without it (plain scaled WS)
    the variance shrinks by var(relu(z)) = 0.34 a layer."""
    assert 0.5 < _variance_after_ws_relu_layers(8) < 2.0
    assert _variance_after_ws_relu_layers(8, gamma=1.0) < (0.5 - 0.5 / math.pi) ** 8 * 4


def _reference_agc(weight: np.ndarray, grad: np.ndarray, clip: float, eps: float = 1e-3) -> np.ndarray:
    """AGC from the formula: unit i (row of a matrix/kernel, or the whole vector) gets
    G_i * clip * max(||W_i||, eps) / ||G_i|| when ||G_i|| / max(||W_i||, eps) > clip."""
    if weight.ndim <= 1:
        rows_w, rows_g = weight.reshape(1, -1), grad.reshape(1, -1)
    else:
        rows_w, rows_g = weight.reshape(len(weight), -1), grad.reshape(len(grad), -1)
    out = rows_g.copy()
    for i in range(len(rows_w)):
        w_norm = max(np.linalg.norm(rows_w[i]), eps)
        g_norm = np.linalg.norm(rows_g[i])
        if g_norm / w_norm > clip:
            out[i] = rows_g[i] * clip * w_norm / g_norm
    return out.reshape(grad.shape)


def _small_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        WSConv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_agc_equals_the_formula_and_leaves_the_classifier_alone():
    model = _small_net()
    with torch.no_grad():
        model[0].weight[0].mul_(1e-4)  # a unit whose weight norm is below eps: the eps floor applies
    loss = F.cross_entropy(model(torch.randn(5, 3, 4, 4) * 10), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    params = list(model.parameters())
    grads = [p.grad.clone() for p in params]
    clip = 0.05
    AdaptiveClipping(model, clip)(params, [p.grad for p in params])
    assert classifier_name(model) == "4"
    clipped_units = 0
    for (name, p), before in zip(model.named_parameters(), grads, strict=True):
        if name.startswith("4."):
            assert torch.equal(p.grad, before), f"the classifier's {name} was clipped"
            continue
        expected = _reference_agc(p.detach().numpy(), before.numpy(), clip)
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=1e-15, err_msg=name)
        clipped_units += int((~np.isclose(expected, before.numpy())).any())
    assert clipped_units >= 2  # the test exercises clipping (not only the pass-through branch)
    unclipped = [g.clone() for g in grads]
    adaptive_clip_(params, unclipped, clip=1e9)
    assert all(torch.equal(a, b) for a, b in zip(unclipped, grads, strict=True))


def test_stacked_agc_clips_each_member_as_alone():
    torch.manual_seed(2)
    params = [torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4), torch.randn(3)]
    grads = [torch.randn_like(p) * s for p, s in zip(params, (5, 0.01, 3), strict=True)]
    stacked = [g.clone() for g in grads]
    adaptive_clip_(params, stacked, 0.1, stacked=True)
    for member in range(3):
        alone = [g[member].clone() for g in grads]
        adaptive_clip_([p[member] for p in params], alone, 0.1)
        for got, expected in zip(stacked, alone, strict=True):
            torch.testing.assert_close(got[member], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("model_name", ["resnet8", "mlp"])
def test_norm_free_model_trains_at_batch_size_one_without_nan(model_name):
    torch.manual_seed(0)
    conv = "plain" if model_name == "mlp" else "ws"
    model = build_model(model_name, 4, "none", 3, image_size=8, conv=conv)
    assert not any(is_norm(m) for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    result = train(
        model, images, labels, batch_size=1, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4,
        generator=torch.Generator().manual_seed(0), agc_clip=0.01,
    )  # fmt: skip
    assert result.batch_size == 1 and result.steps == 10 and math.isfinite(result.loss)
    state = model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert any(not torch.equal(state[k], before[k]) for k in before)
    if model_name == "resnet8":
        gains = [k for k in state if k.endswith("residual_gain.gain")]
        assert len(gains) == 3 and all(before[k] == 0 for k in gains) and any(state[k] != 0 for k in gains)


def test_norm_free_resnet_starts_as_its_skip_path():
    model = build_model("resnet8", 4, "none", 3, conv="ws").eval()
    block = model.stages[0][0]
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert isinstance(block.residual_gain, ResidualGain)
    assert isinstance(build_model("resnet8", 4, "bn", 3).stages[0][0].residual_gain, nn.Identity)


@pytest.mark.parametrize("norm", ["bn", "hn", "none"])
def test_fold_turns_ws_convolutions_into_plain_ones(norm):
    torch.manual_seed(0)
    model = build_model("resnet8", 4, norm, 3, conv="ws")
    model.train()(torch.randn(8, 3, 8, 8))  # running statistics away from their init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # gains, biases and SkipInit gains away from their init
    folded, report = fold_norms(model)
    assert not any(isinstance(m, WSConv2d) for m in folded.modules())
    assert len(report.standardized) == 9 and isinstance(model.stem[0], WSConv2d)  # the model itself unchanged
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-10, atol=1e-10)


def test_models_refuse_ws_without_convolutions_and_unknown_convs():
    with pytest.raises(ValueError, match="the mlp has none; use conv = 'plain'"):
        build_model("mlp", conv="ws")
    with pytest.raises(ValueError, match="Unknown conv 'std': use one of plain, ws"):
        build_model("resnet8", conv="std")


def test_torchvision_models_take_no_norm_and_ws_convolutions():
    model = build_model("tv_resnet18", 4, "none", 3, conv="ws")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, WSConv2d) for m in convs)
    assert not any(is_norm(m) for m in model.modules())
    assert torch.isfinite(model(torch.randn(1, 3, 16, 16))).all()
    assert not any(is_norm(m) for m in replace_norms(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), "none"))
