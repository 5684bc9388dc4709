"""Batch Renormalization (preset brn): Algorithm 1 of Ioffe 2017 (NumPy reference), r and d without
gradient, BatchNorm exactly at r_max = 1, d_max = 0, running statistics and eval like BatchNorm, errors."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhn.models import build_model
from fedhn.norms import BatchRenorm, norm_layer, set_renorm_limits
from tests.reference import batch_renorm


def _layer(channels: int, r_max: float, d_max: float, momentum: float | None = 0.1) -> BatchRenorm:
    """A float64 layer with random affine parameters and running statistics away from their init."""
    torch.manual_seed(0)
    layer = BatchRenorm(channels, momentum=momentum, r_max=r_max, d_max=d_max).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.2, 3.0)
    return layer


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (8, 4), (5, 4, 6)])
@pytest.mark.parametrize(("r_max", "d_max"), [(3.0, 5.0), (1.5, 0.2), (1.0, 0.0)])
def test_training_steps_equal_algorithm_1(shape, r_max, d_max):
    layer = _layer(shape[1], r_max, d_max)
    for step in range(3):
        x = torch.randn(*shape, dtype=torch.float64) * (1 + step) + 0.7 * step
        args = [t.detach().numpy().copy() for t in (layer.running_mean, layer.running_var, layer.weight, layer.bias)]
        y, r, d, mean, var = batch_renorm(x.numpy(), *args, r_max, d_max, layer.eps, layer.momentum)
        torch.testing.assert_close(layer.corrections(x), (torch.from_numpy(r), torch.from_numpy(d)))
        np.testing.assert_allclose(layer(x).detach().numpy(), y, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    assert layer.num_batches_tracked.item() == 3


def test_the_corrections_are_used_unclipped_and_clipped():
    layer = _layer(4, 3.0, 5.0)
    x = torch.randn(16, 4, 2, 2, dtype=torch.float64)
    r, d = layer.corrections(x)
    assert ((r > 1 / 3) & (r < 3) & (r != 1)).all() and ((d.abs() < 5) & (d != 0)).all()
    for running_var, running_mean, bounds in ((1e6, 1e4, (1 / 3, -5.0)), (1e-6, -1e4, (3.0, 5.0))):
        with torch.no_grad():
            layer.running_var.fill_(running_var)
            layer.running_mean.fill_(running_mean)
        for got, bound in zip(layer.corrections(x), bounds, strict=True):
            torch.testing.assert_close(got, torch.full((4,), bound, dtype=torch.float64))


def test_r_and_d_get_no_gradient():
    """The gradients are those of the formula with r and d held constant (an autograd reference of the
    paper's expression with r and d detached)."""
    layer = _layer(4, 3.0, 5.0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    r, d = (c.view(1, 4, 1, 1) for c in layer.corrections(x))
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    sigma_b = (x.var(dim=(0, 2, 3), keepdim=True, correction=0) + layer.eps).sqrt()
    weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
    reference = ((x - mean) / sigma_b * r + d) * weight.view(1, 4, 1, 1) + bias.view(1, 4, 1, 1)
    expected = torch.autograd.grad((reference * upstream).sum(), (x, weight, bias))
    got = torch.autograd.grad((layer(x) * upstream).sum(), (x, layer.weight, layer.bias))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_gradcheck_with_saturated_corrections():
    """gradcheck perturbs the input, which moves r and d unless they sit at their bounds: with the running
    statistics far from the batch's, r = 1/r_max and d = d_max are constants and the layer is differentiable
    as it is (momentum 0 keeps the running statistics fixed between evaluations)."""
    layer = _layer(3, 2.0, 0.5, momentum=0.0)
    with torch.no_grad():
        layer.running_var.fill_(100.0)
        layer.running_mean.fill_(-50.0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    r, d = layer.corrections(x)
    assert torch.all(r == 0.5) and torch.all(d == 0.5)
    weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))

    def forward(inp, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (inp,))

    assert torch.autograd.gradcheck(forward, (x, weight, bias))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_with_r_max_1_and_d_max_0_it_is_batchnorm_exactly(momentum):
    """Outputs, gradients, running statistics and counters bit for bit equal to nn.BatchNorm2d's, over steps."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=momentum)
    brn = BatchRenorm(5, momentum=momentum, r_max=1.0, d_max=0.0)
    with torch.no_grad():
        bn.weight.uniform_(-1, 2)  # negative scales too
        bn.bias.normal_()
    brn.load_state_dict(bn.state_dict())
    for step in range(4):
        x = torch.randn(4, 5, 3, 3) * (2 + step) + step
        upstream = torch.randn(4, 5, 3, 3)
        outputs = [layer(x) for layer in (bn, brn)]
        grads = [torch.autograd.grad((y * upstream).sum(), (layer.weight, layer.bias)) for y, layer in zip(outputs, (bn, brn), strict=True)]  # fmt: skip
        assert torch.equal(outputs[0], outputs[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
        for key, value in bn.state_dict().items():
            assert torch.equal(brn.state_dict()[key], value), key
    x = torch.randn(3, 5, 3, 3)
    assert torch.equal(bn.eval()(x), brn.eval()(x))


def test_eval_uses_the_running_statistics_like_batchnorm():
    layer = _layer(4, 3.0, 5.0)
    for _ in range(3):
        layer(torch.randn(8, 4, 3, 3, dtype=torch.float64) * 2 + 1)
    layer.eval()
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mean, var = (t.view(1, 4, 1, 1) for t in (layer.running_mean, layer.running_var))
    expected = (x - mean) / (var + layer.eps).sqrt() * layer.weight.view(1, 4, 1, 1) + layer.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(layer.state_dict()[key], value) for key, value in before.items())


def test_state_dict_keys_are_batchnorms():
    assert list(BatchRenorm(4).state_dict()) == list(nn.BatchNorm2d(4).state_dict())


def test_set_renorm_limits_reaches_every_layer_of_a_model():
    model = build_model("resnet8", norm="brn")
    assert set_renorm_limits(model, 2.0, 0.5) == 9
    assert all((m.r_max, m.d_max) == (2.0, 0.5) for m in model.modules() if isinstance(m, BatchRenorm))


def test_norm_layer_builds_brn_with_the_papers_targets_by_default():
    layer = norm_layer("brn", momentum=0.01)(8)
    assert isinstance(layer, BatchRenorm) and (layer.r_max, layer.d_max, layer.momentum) == (3.0, 5.0, 0.01)


def test_population_statistics_are_stored_like_running_updates():
    layer = BatchRenorm(2)
    layer.set_population_statistics(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 9.0]), 10)
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(layer.running_var, torch.tensor([4.0, 9.0]) * 10 / 9)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: BatchRenorm(4, r_max=0.5), r"r_max .* must be >= 1 \(1 = BatchNorm\), got 0.5"),
        (lambda: BatchRenorm(4, d_max=-1), r"d_max .* must be >= 0 \(0 = BatchNorm\), got -1"),
        (lambda: BatchRenorm(4).set_limits(float("nan"), 0), "r_max"),
        (lambda: BatchRenorm(0), "num_features must be a positive channel count"),
        (lambda: BatchRenorm(4)(torch.randn(2, 3, 4)), r"BatchRenorm\(4\) expects input of shape \(N, 4, \.\.\.\)"),
        (lambda: BatchRenorm(4)(torch.randn(1, 4)), r"shape \(1, 4\) holds a single value per channel; train with at"),
    ],
)
def test_bad_parameters_and_inputs_are_refused(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()
