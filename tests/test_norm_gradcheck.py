"""Float64 gradients of heterologous configs and mixtures, checked numerically (contiguous CPU float64
input: ``hn``, ``hn_g2`` and the bn-mean mixtures run through the fused kernel, the others the general path)."""

import pytest
import torch

from fedhn.norms import norm_layer


@pytest.mark.parametrize(
    "spec",
    [
        "hn",
        "hn_g2",
        "en",
        "sn",
        "mean=bn,std=bn+en",
        "mean=bn,std=en_g2+en+bn",
        "mean=in,std=en",
        "mean=ln,std=bn",
        "mean=en_g2,std=gn_g4+en",
    ],
)
def test_gradcheck_input_and_parameters(spec):
    torch.manual_seed(0)
    layer = norm_layer(spec)(4).double()
    names = [name for name, _ in layer.named_parameters()]
    params = [(p.detach() + torch.randn_like(p) * 0.5).requires_grad_() for p in layer.parameters()]
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64, requires_grad=True)

    def forward(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values, strict=True)), (inp,))

    assert torch.autograd.gradcheck(forward, (x, *params))
