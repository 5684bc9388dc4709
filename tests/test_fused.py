"""The fused kernel of mean-bn norms agrees with the general path, and the layer dispatches to it exactly
for the configurations it supports."""

import pytest
import torch

from fedhn.norms import kernel_build, norm_layer

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


@pytest.mark.parametrize(
    "make_input",
    [
        lambda: torch.randn(4, 8, 3, 3).to(memory_format=torch.channels_last),
        lambda: torch.randn(4, 8, 3, 3, dtype=torch.bfloat16),
    ],
    ids=["channels_last", "bfloat16"],
)
def test_inputs_the_kernel_does_not_take_use_the_general_path(make_input):
    layer = norm_layer("hn")(8)
    x = make_input().requires_grad_()
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
