"""The Triton kernels of the fused norm (fedhn.norms.fused_triton) against the general path: outputs, gradients,
running statistics, half inputs, vmap over members, packed cohorts, bitwise repeatability.

Not collected by the suite: tests/test_fused_triton.py runs this file in a subprocess, with ``TRITON_INTERPRET=1``
(the kernels run on CPU tensors, registered as the CPU kernels) and, where CUDA is present, without it (CUDA
tensors). Shapes stay tiny: the interpreter runs every program in NumPy.
"""

import copy
import os

import pytest
import torch

from fedhn.norms import fused, norm_layer

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SPECS = ["hn", "hn_g2", "mean=bn,std=bn+en", "mean=bn,std=en_g4+en"]
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def device(monkeypatch) -> torch.device:
    """CPU tensors on the interpreted Triton kernels, else CUDA tensors; counts the Triton launches."""
    from fedhn.norms import fused_triton

    if INTERPRETED:
        monkeypatch.setitem(fused.KERNELS, "cpu", fused.KERNELS["cuda"])
        target = torch.device("cpu")
    elif torch.cuda.is_available():
        target = torch.device("cuda")
    else:
        pytest.skip("needs CUDA, or TRITON_INTERPRET=1 for CPU tensors")
    for name in ("forward", "backward"):
        monkeypatch.setattr(fused_triton, name, _counted(getattr(fused_triton, name), name))
    CALLS.clear()
    return target


CALLS: list[str] = []


def _counted(function, name):
    def run(*arguments):
        CALLS.append(name)
        return function(*arguments)

    return run


def _twin_layers(spec: str, channels: int, device: torch.device, **kwargs):
    """Two layers with the same random parameters (the second for the general path)."""
    torch.manual_seed(0)
    layer = norm_layer(spec, **kwargs)(channels).to(device)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    twin = copy.deepcopy(layer)
    return layer, twin


def _assert_steps_match(layer, general, shape, dtype, device, steps: int, tolerance: dict) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = (torch.randn(shape, generator=generator) * 3 + 1).to(device, dtype).requires_grad_()
        x_general = x.detach().clone().requires_grad_()
        grad = torch.randn(shape, generator=generator).to(device, dtype)
        y, y_general = layer(x), general._forward_heterologous(x_general)
        assert type(y.grad_fn).__name__ == "_HnNormBackward" and y.dtype == dtype
        torch.testing.assert_close(y, y_general, **tolerance.get("y", {}))
        y.backward(grad)
        y_general.backward(grad)
        torch.testing.assert_close(x.grad, x_general.grad, **tolerance.get("y", {}))
        for (name, p), p_general in zip(layer.named_parameters(), general.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_general.grad, msg=name, **tolerance["float32"])
    for (name, b), b_general in zip(layer.named_buffers(), general.buffers(), strict=True):
        torch.testing.assert_close(b, b_general, msg=name, **tolerance["float32"])
    assert CALLS.count("forward") == CALLS.count("backward") == steps


@pytest.mark.parametrize(("shape", "steps"), [((4, 16, 5, 5), 2), ((6, 16), 1)])
@pytest.mark.parametrize("spec", SPECS)
def test_layer_matches_general_path(device, spec, shape, steps):
    layer, general = _twin_layers(spec, 16, device)
    tolerance = {"y": FLOAT32, "float32": FLOAT32}
    _assert_steps_match(layer, general, shape, torch.float32, device, steps, tolerance)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [("hn", (2, 4, 40, 40)), ("hn", (2, 66, 2, 2))],
    ids=["several-pieces", "groups-of-66-channels"],
)
def test_layer_matches_general_path_beyond_one_block(device, spec, shape):
    """Channels split into several pieces (R > 512), groups wider than one channel block (64)."""
    layer, general = _twin_layers(spec, shape[1], device)
    _assert_steps_match(layer, general, shape, torch.float32, device, 1, {"y": FLOAT32, "float32": FLOAT32})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", ["hn", "mean=bn,std=bn+en"])
def test_half_inputs_with_float32_statistics_match_general_path(device, spec, dtype):
    layer, general = _twin_layers(spec, 8, device)
    tolerance = {"y": {}, "float32": {"rtol": 1e-3, "atol": 1e-3}}  # y, dx: the dtype's default tolerance
    _assert_steps_match(layer, general, (4, 8, 3, 3), dtype, device, 2, tolerance)
    assert layer.running_mean.dtype == torch.float32


def test_operators_pass_opcheck_with_bfloat16_inputs(device):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 2, 2, generator=generator).to(device, torch.bfloat16).requires_grad_()
    weight, bias = torch.randn(2, 8, generator=generator).to(device).requires_grad_()
    set_weight = torch.softmax(torch.randn(2, 1, dtype=torch.float64), 0).expand(2, 8).contiguous().to(device)
    inputs = (x, [8, 2], weight, bias, set_weight.requires_grad_(), 1e-5)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")  # aot_dispatch: slow interpreted
    torch.library.opcheck(torch.ops.fedhn.hn_norm.default, inputs, test_utils=checks)
    y, stats = torch.ops.fedhn.hn_norm.default(*(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs))
    assert stats.dtype == torch.float32
    detached = (x.detach(), [8, 2], weight.detach(), set_weight.detach(), stats)
    torch.library.opcheck(torch.ops.fedhn.hn_norm_backward.default, (torch.randn_like(y), *detached), test_utils=checks)


@pytest.mark.parametrize("spec", ["hn_g2", "mean=bn,std=bn+en"])
def test_vmap_over_members_equals_general_path(device, spec):
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.manual_seed(0)
    members = [norm_layer(spec)(8).to(device) for _ in range(2)]
    for layer in members:
        with torch.no_grad():
            for parameter in layer.parameters():
                parameter.normal_()
    general = copy.deepcopy(members)
    params, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta")
    x = torch.randn(2, 4, 8, 3, 3, device=device) * 2 + 1
    weights = torch.randn(x.shape, device=device)

    def loss(params, buffers, x, weights):
        y = functional_call(template, (params, buffers), (x,))
        return (y * weights).sum(), y

    (grad_params, grad_x), y = vmap(grad(loss, argnums=(0, 2), has_aux=True))(params, buffers, x, weights)
    assert CALLS == ["forward", "backward"]  # one launch sequence for all members
    for i, reference in enumerate(general):
        xr = x[i].clone().requires_grad_()
        yr = reference._forward_heterologous(xr)
        (yr * weights[i]).sum().backward()
        torch.testing.assert_close(y[i], yr, **FLOAT32)
        torch.testing.assert_close(grad_x[i], xr.grad, **FLOAT32)
        for name, parameter in reference.named_parameters():
            torch.testing.assert_close(grad_params[name][i], parameter.grad, msg=name, **FLOAT32)
        for name, buffer in reference.named_buffers():
            torch.testing.assert_close(buffers[name][i], buffer, msg=name, **FLOAT32)


def test_packed_cohort_equals_one_by_one(device):
    from torch import nn

    from fedhn.cohort import Client, pack, train_packed, unpack
    from fedhn.training import train

    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        layers = [nn.Conv2d(3, 8, 3, padding=1), norm_layer("hn_g2")(8), nn.ReLU(), nn.Conv2d(8, 8, 3)]
        layers += [norm_layer("hn")(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]
        return nn.Sequential(*layers).to(device)

    sizes = (4, 6)  # examples per client, batch 2: the first one is done after two steps
    models = [model(seed) for seed in range(len(sizes))]
    generator = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(n, 3, 6, 6, generator=generator).to(device), torch.randint(0, 4, (n,)).to(device)) for n in sizes
    ]

    def clients():
        return [Client(x, y, 2, 0.05, torch.Generator().manual_seed(k)) for k, (x, y) in enumerate(data)]

    alone = copy.deepcopy(models)
    cohort = pack(models)
    train_packed(cohort, clients(), epochs=1, momentum=0.9, weight_decay=5e-4)
    assert CALLS.count("forward") == 2 * 3  # two norms, three packed steps: the Triton kernels ran
    for model_alone, client in zip(alone, clients(), strict=True):
        train(model_alone, client.images, client.labels, batch_size=2, epochs=1, lr=0.05, momentum=0.9,
              weight_decay=5e-4, generator=client.generator)  # fmt: skip
    for index, state in enumerate(unpack(cohort)):
        for key, value in alone[index].state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-4, msg=f"client {index} {key}")


def test_repeated_calls_are_bitwise_equal(device):
    """No atomics: every reduction has a fixed order, so the same inputs give the same bits."""
    layer, _ = _twin_layers("mean=bn,std=bn+en", 8, device)
    x = torch.randn(4, 8, 16, 16, device=device, requires_grad=True)  # two pieces per channel
    grad = torch.randn(x.shape, device=device)
    results = []
    for _ in range(2):
        x.grad = layer.weight.grad = layer.var_logits.grad = None
        y = layer(x)
        y.backward(grad)
        results.append([t.clone() for t in (y, x.grad, layer.weight.grad, layer.var_logits.grad)])
    for first, second in zip(*results, strict=True):
        assert torch.equal(first, second)
