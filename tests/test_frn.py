"""FRN + TLU (preset frn): the paper's formula (NumPy reference), gradients, per-sample behaviour,
the learned eps on 1x1 maps, the models' TLU and clear errors."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhn.models import build_model
from fedhn.norms import TLU, FilterResponseNorm, activation_after, norm_layer
from fedhn.norms.frn import LEARNED_EPS_INIT
from tests.reference import filter_response_norm


def _layer(channels: int, seed: int = 0) -> tuple[FilterResponseNorm, TLU]:
    torch.manual_seed(seed)
    norm, tlu = FilterResponseNorm(channels).double(), TLU(channels).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
        tlu.tau.normal_()
    return norm, tlu


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 4, 7), (5, 4, 2, 3, 2)])
def test_frn_and_tlu_equal_the_numpy_formula(shape):
    norm, tlu = _layer(shape[1])
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    y = norm(x)
    expected_y, expected_z = filter_response_norm(
        x.numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy(), tlu.tau.detach().numpy(), norm.eps
    )
    np.testing.assert_allclose(y.detach().numpy(), expected_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tlu(y).detach().numpy(), expected_z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 1, 1)])
def test_one_position_maps_add_the_learned_eps(shape):
    norm, _ = _layer(shape[1])
    with torch.no_grad():
        norm.eps_l.fill_(-0.3)  # |eps_l| counts
    x = torch.randn(*shape, dtype=torch.float64)
    zeros = np.zeros(shape[1])
    expected, _ = filter_response_norm(
        x.numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy(), zeros, norm.eps + 0.3
    )
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-12)


def test_learned_eps_starts_small_and_has_no_effect_on_larger_maps():
    norm, _ = _layer(4)
    assert norm.eps_l.item() == pytest.approx(LEARNED_EPS_INIT)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    before = norm(x)
    with torch.no_grad():
        norm.eps_l.fill_(10.0)
    torch.testing.assert_close(norm(x), before, rtol=0, atol=0)
    norm(x).sum().backward()
    assert norm.eps_l.grad.item() == 0.0


def test_each_sample_is_normalized_alone_in_training_and_eval():
    norm, _ = _layer(4)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    batch = norm(x)
    alone = torch.cat([norm(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(alone, batch, rtol=0, atol=0)
    torch.testing.assert_close(norm.eval()(x), batch, rtol=0, atol=0)
    assert not list(norm.buffers())


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (4, 4)])
def test_gradcheck_frn_and_tlu(shape):
    torch.manual_seed(0)
    norm, tlu = _layer(shape[1])
    names = [name for name, _ in norm.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in norm.parameters()]
    tau = tlu.tau.detach().clone().requires_grad_()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def forward(inp, tau_value, *values):
        y = torch.func.functional_call(norm, dict(zip(names, values, strict=True)), (inp,))
        return torch.func.functional_call(tlu, {"tau": tau_value}, (y,))

    assert torch.autograd.gradcheck(forward, (x, tau, *params))


def test_the_models_put_tlu_where_the_relus_were():
    model = build_model("resnet8", norm="frn")
    tlus = [m for m in model.modules() if isinstance(m, TLU)]
    # stem, then per block: after norm1 and after the residual sum
    assert len(tlus) == 1 + 2 * 3 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert [t.num_features for t in tlus] == [16, 16, 16, 32, 32, 64, 64]
    mlp = build_model("mlp", norm="frn", image_size=8)
    assert sum(isinstance(m, TLU) for m in mlp.modules()) == 4
    model(torch.randn(1, 3, 8, 8)).sum().backward()  # batch size 1 trains
    assert all(t.tau.grad is not None for t in tlus)


def test_other_norms_keep_relu():
    assert isinstance(activation_after(nn.BatchNorm2d(4)), nn.ReLU)
    assert not any(isinstance(m, TLU) for m in build_model("resnet8", norm="bn").modules())


def test_norm_layer_builds_frn_with_settings():
    layer = norm_layer("FRN", eps=1e-3)(8)
    assert isinstance(layer, FilterResponseNorm) and layer.eps == 1e-3 and layer.num_features == 8


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: FilterResponseNorm(0), "num_features must be a positive channel count"),
        (lambda: FilterResponseNorm(4, eps=0.0), "eps must be positive"),
        (lambda: FilterResponseNorm(4)(torch.randn(2, 3, 4, 4)), r"expects input of shape \(N, 4, \.\.\.\)"),
        (lambda: TLU(4)(torch.randn(2, 3)), r"TLU\(4\) expects input of shape"),
    ],
)
def test_bad_parameters_and_inputs_are_refused(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()
