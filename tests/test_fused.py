"""The fused kernel of mean-bn norms agrees with the general path, and the layer dispatches to it exactly
for the configurations it supports."""

import copy
import re

import pytest
import torch

from fedhn.norms import fused, kernel_build, norm_layer

FUSED_SPECS = ["hn", "hn_g2", "hn_g8", "mean=bn,std=bn+en", "mean=bn,std=en_g4+en"]
OTHER_SPECS = ["bn", "en", "en_g4", "sn", "gn_g4", "mean=en,std=bn", "mean=bn+en,std=en", "mean=bn,std=en+in"]


def _is_fused(y: torch.Tensor) -> bool:
    """Whether ``y`` came out of the fused operator ``fedhn::hn_norm`` (its autograd node)."""
    return type(y.grad_fn).__name__ == "_HnNormBackward"


def _twin_layers(spec: str, channels: int = 16, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two layers with the same random parameters and statistics."""
    torch.manual_seed(0)
    layer = norm_layer(spec, **kwargs)(channels)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    twin = norm_layer(spec, **kwargs)(channels)
    twin.load_state_dict(layer.state_dict())
    return layer, twin


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(4, 16, 5, 5), (6, 16), (3, 16, 7)])
@pytest.mark.parametrize("spec", FUSED_SPECS)
def test_fused_path_matches_general_path_over_training_steps(spec, shape, momentum):
    fused_layer, general = _twin_layers(spec, momentum=momentum)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = (torch.randn(shape, generator=generator) * 3 + 1).requires_grad_()
        x_general = x.detach().clone().requires_grad_()
        grad = torch.randn(shape, generator=generator)
        y, y_general = fused_layer(x), general._forward_heterologous(x_general)
        assert _is_fused(y)
        torch.testing.assert_close(y, y_general)
        y.backward(grad)
        y_general.backward(grad)
        torch.testing.assert_close(x.grad, x_general.grad)
        for (name, p), p_general in zip(fused_layer.named_parameters(), general.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_general.grad, msg=name)
    for (name, b), b_general in zip(fused_layer.named_buffers(), general.buffers(), strict=True):
        torch.testing.assert_close(b, b_general, msg=name)


@pytest.mark.parametrize("spec", ["hn", "mean=bn,std=bn+en"])
def test_fused_path_without_affine_matches_general_path(spec):
    fused_layer, general = _twin_layers(spec, affine=False)
    x = torch.randn(4, 16, 3, 3, requires_grad=True)
    x_general = x.detach().clone().requires_grad_()
    y, y_general = fused_layer(x), general._forward_heterologous(x_general)
    torch.testing.assert_close(y, y_general)
    y.sum().backward()  # an expanded (non-contiguous) output gradient
    y_general.sum().backward()
    torch.testing.assert_close(x.grad, x_general.grad)


@pytest.mark.parametrize("spec", OTHER_SPECS)
def test_other_specs_keep_their_path(spec):
    layer = norm_layer(spec)(8)
    assert not _is_fused(layer(torch.randn(4, 8, 3, 3, requires_grad=True)))


def test_inputs_the_kernel_does_not_take_use_the_general_path():
    layer = norm_layer("hn")(8)
    x = torch.randn(4, 8, 3, 3, dtype=torch.bfloat16).requires_grad_()
    y = layer(x)
    assert not _is_fused(y)
    y.sum().backward()


def test_eval_mode_of_single_batch_sets_matches_general_path():
    for spec in ["hn", "hn_g8", "en_g2", "mean=en,std=bn"]:
        layer, general = _twin_layers(spec)
        layer(torch.randn(4, 16, 3, 3) * 2 + 1)
        general.load_state_dict(layer.state_dict())
        layer.eval()
        general.eval()
        x = torch.randn(2, 16, 3, 3, requires_grad=True)
        x_general = x.detach().clone().requires_grad_()
        y, y_general = layer(x), general._forward_heterologous(x_general)
        torch.testing.assert_close(y, y_general)
        y.backward(torch.ones_like(y))
        y_general.backward(torch.ones_like(y))
        torch.testing.assert_close(x.grad, x_general.grad)
        torch.testing.assert_close(layer.weight.grad, general.weight.grad)


def test_without_a_compiler_the_layer_warns_and_uses_the_general_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel_build.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build the fused norm kernel"):
            y = norm_layer("hn")(8)(torch.randn(4, 8, 3, 3, requires_grad=True))
        assert not _is_fused(y)
    finally:
        kernel_build.load.cache_clear()


def test_running_statistics_of_another_dtype_use_the_general_path():
    layer = norm_layer("hn", affine=False)(8).double()
    y = layer(torch.randn(4, 8, 3, 3, requires_grad=True))
    assert not _is_fused(y) and layer.running_mean.dtype == torch.float64 and layer.num_batches_tracked == 1


def _operator_inputs(dtype: torch.dtype, affine: bool = True) -> tuple:
    """Arguments of fedhn::hn_norm for a mixture of two std sets (bn and en_g2) over 8 channels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 2, 2, dtype=dtype, generator=generator).requires_grad_()
    weight, bias = torch.randn(2, 8, dtype=dtype, generator=generator).requires_grad_() if affine else [None, None]
    logits = torch.randn(2, 1, dtype=torch.float64, generator=generator)
    set_weight = torch.softmax(logits, 0).expand(2, 8).contiguous().requires_grad_()
    return x, [8, 2], weight, bias, set_weight, 1e-5


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_pass_opcheck(dtype, affine):
    inputs = _operator_inputs(dtype, affine)
    torch.library.opcheck(torch.ops.fedhn.hn_norm.default, inputs)
    x, groups, weight, _, set_weight, _ = (t.detach() if isinstance(t, torch.Tensor) else t for t in inputs)
    y, stats = torch.ops.fedhn.hn_norm.default(*(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs))
    torch.library.opcheck(
        torch.ops.fedhn.hn_norm_backward.default, (torch.randn_like(y), x, groups, weight, set_weight, stats)
    )
    running = torch.zeros(8, dtype=dtype), torch.ones(10, dtype=dtype), torch.zeros(10, dtype=dtype)
    torch.library.opcheck(torch.ops.fedhn.hn_update_running.default, (*running, stats, groups, 0.1))


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, lambda x: x.transpose(2, 3), "x must be contiguous"),
        (0, lambda x: x.half(), "x must be a float32 or float64 CPU tensor"),
        (1, lambda groups: [8, 3], "groups must list"),
        (2, lambda weight: weight[:4], r"weight must be a torch.float32 tensor of shape \(8,\)"),
        (3, lambda bias: bias.double(), r"bias must be a torch.float32 tensor"),
        (4, lambda set_weight: set_weight.float(), r"set_weight must be a torch.float64 tensor of shape \(2, 8\)"),
    ],
)
def test_operator_rejects_bad_arguments_naming_them(position, value, message):
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in _operator_inputs(torch.float32)]
    inputs[position] = value(inputs[position])
    with pytest.raises(ValueError, match=f"fedhn::hn_norm: {message}"):
        torch.ops.fedhn.hn_norm.default(*inputs)


def test_update_rejects_running_statistics_of_the_wrong_shape():
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in _operator_inputs(torch.float32)]
    _, stats = torch.ops.fedhn.hn_norm.default(*inputs)
    for running, name in (
        ((torch.zeros(8), torch.ones(9), None), "running_var"),
        ((torch.zeros(8), torch.ones(10), torch.zeros(10, dtype=torch.float64)), "running_center"),
    ):
        with pytest.raises(ValueError, match=f"fedhn::hn_update_running: {name} must be"):
            torch.ops.fedhn.hn_update_running.default(*running, stats, [8, 2], 0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor", [0.1, 0.7])  # both of torch.lerp's formulas
@pytest.mark.parametrize(("rows", "center"), [((), False), ((), True), ((3,), True)])
def test_c_update_of_running_statistics_equals_foreach_lerp(dtype, factor, rows, center):
    channels, groups = 8, 2
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(*rows, *shape, generator=generator, dtype=dtype)

    running = [random(channels), random(groups), random(groups) if center else None]
    stats = random(sum(fused.stat_sizes(channels, [groups])))
    expected = [None if t is None else t.clone() for t in running]
    fused._lerp_update(*expected, stats, groups, factor)
    fused._c_update(*running, stats, groups, factor)
    for got, want in zip(running, expected, strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=4 * torch.finfo(dtype).eps)


def test_a_failing_kernel_leaves_the_batch_counter(monkeypatch):
    layer = norm_layer("hn")(8)

    def fail(*args, **kwargs):
        raise MemoryError("the fused norm kernel could not allocate its per-channel workspace")

    monkeypatch.setattr(kernel_build.Kernel, "call", fail)
    with pytest.raises(MemoryError):
        layer(torch.randn(4, 8, 3, 3))
    assert layer.num_batches_tracked == 0


def _members(spec: str, count: int, dtype: torch.dtype) -> list[torch.nn.Module]:
    """``count`` layers of ``spec`` with different random parameters and running statistics."""
    torch.manual_seed(0)
    layers = [norm_layer(spec)(16).to(dtype) for _ in range(count)]
    for layer in layers:
        layer(torch.randn(4, 16, 3, 3, dtype=dtype))  # distinct running statistics
        with torch.no_grad():
            for parameter in layer.parameters():
                parameter.normal_()
    return layers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", FUSED_SPECS)
def test_vmap_over_members_equals_separate_calls(spec, dtype):
    from torch.func import functional_call, grad, stack_module_state, vmap

    members = _members(spec, 3, dtype)
    separate, general = copy.deepcopy(members), copy.deepcopy(members)
    params, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta")
    x = torch.randn(3, 4, 16, 3, 3, dtype=dtype) * 2 + 1
    weights = torch.randn(x.shape, dtype=dtype)

    def loss(params, buffers, x, weights):
        y = functional_call(template, (params, buffers), (x,))
        return (y * weights).sum(), y

    (grad_params, grad_x), y = vmap(grad(loss, argnums=(0, 2), has_aux=True))(params, buffers, x, weights)
    tight = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for i, (layer, reference) in enumerate(zip(separate, general, strict=True)):
        xi, xr = x[i].clone().requires_grad_(), x[i].clone().requires_grad_()
        yi, yr = layer(xi), reference._forward_heterologous(xr)
        assert _is_fused(yi)
        (yi * weights[i]).sum().backward()
        (yr * weights[i]).sum().backward()
        for expected, tolerance in ((yi, {}), (yr, tight)):
            torch.testing.assert_close(y[i], expected, **tolerance)
        torch.testing.assert_close(grad_x[i], xi.grad)
        torch.testing.assert_close(grad_x[i], xr.grad, **tight)
        for name, parameter in layer.named_parameters():
            torch.testing.assert_close(grad_params[name][i], parameter.grad, msg=name)
        for (name, b), b_general in zip(layer.named_buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(buffers[name][i], b, msg=name)
            torch.testing.assert_close(buffers[name][i], b_general, msg=name, **tight)


def test_vmap_with_shared_parameters_and_a_non_contiguous_batch(monkeypatch):
    from torch.func import functional_call, stack_module_state, vmap

    calls = []
    monkeypatch.setattr(fused, "_NORM", lambda *args, run=fused._NORM: calls.append(args) or run(*args))

    layer = norm_layer("mean=bn,std=bn+en")(8)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    twins = [copy.deepcopy(layer) for _ in range(3)]
    _, buffers = stack_module_state(twins)
    params = dict(layer.named_parameters())
    x = torch.randn(4, 3, 8, 5)  # members along dim 1: each member's slice is not contiguous
    y = vmap(lambda b, x: functional_call(layer, (params, b), (x,)), in_dims=(0, 1))(buffers, x)
    assert calls  # the fused operator, not the general path
    for i, twin in enumerate(twins):
        torch.testing.assert_close(y[i], twin(x[:, i].contiguous()))
        for name, b in twin.named_buffers():
            torch.testing.assert_close(buffers[name][i], b, msg=name)


def test_vmap_with_shared_running_statistics_says_to_stack_them():
    from torch.func import vmap

    layer = norm_layer("hn")(8)
    with pytest.raises(ValueError, match="running statistics must be batched"):
        vmap(layer)(torch.randn(3, 4, 8, 3))


def test_compiled_model_runs_the_fused_operators_and_matches_eager():
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), norm_layer("mean=bn,std=bn+en")(8), torch.nn.ReLU(), norm_layer("hn_g2")(8)
    )
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    y, (code,) = run_and_get_code(torch.compile(model), x)
    assert len(re.findall(r"= torch\.ops\.fedhn\.hn_norm\.default\(", code)) == 2  # both norms, no general path
    assert len(re.findall(r"^ *torch\.ops\.fedhn\.hn_update_running\.default\(", code, re.MULTILINE)) == 2
    y_eager = eager(x)
    assert _is_fused(y_eager)
    torch.testing.assert_close(y, y_eager)
    y.sum().backward()
    y_eager.sum().backward()
    for (name, p), p_eager in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_eager.grad, msg=name)
    for (name, b), b_eager in zip(model.named_buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(b, b_eager, msg=name)


def test_a_channels_last_input_takes_the_fused_path_and_returns_nchw():
    """A convolution over 1-channel images returns channels_last; the fused path must not fall back to the
    (3.5-6x slower) general path for it (it did: hn trained 2x slower than bn on MNIST)."""
    fused_layer, general = _twin_layers("hn")
    x = torch.randn(4, 16, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    x_general = x.detach().clone().requires_grad_()
    y, y_general = fused_layer(x), general._forward_heterologous(x_general)
    assert _is_fused(y) and y.is_contiguous()
    torch.testing.assert_close(y, y_general)
    y.sum().backward()
    y_general.sum().backward()
    torch.testing.assert_close(x.grad, x_general.grad)


def test_every_norm_of_a_resnet_on_one_channel_images_trains_fused():
    from fedhn.models import build_model

    model = build_model("resnet8", num_classes=10, norm="hn", in_channels=1, image_size=28)
    outputs = []
    for layer in model.modules():
        if hasattr(layer, "std_sets"):
            layer.register_forward_hook(lambda _m, _i, out: outputs.append(_is_fused(out)))
    model(torch.randn(8, 1, 28, 28)).sum().backward()
    assert len(outputs) == 9 and all(outputs)
