"""Every model builds with every preset whose groups fit, runs forward and backward, and round-trips its state."""

import functools

import pytest
import torch

from fedhn.models import build_model
from fedhn.norms import LAYER_CLASSES, TLU, HeterologousNorm, is_norm, parse_spec

MODELS = [
    "resnet8",
    "resnet20",
    "resnet10",
    "resnet18",
    "mlp",
    "tv_resnet18",
    "mobilenet_v2",
    "shufflenet_v2_x1_5",
    "densenet121",
]
PRESETS = ["bn", "in", "ln", "gn", "gn_g4", "en", "en_g4", "hn", "hn_g8", "sn", "mean=bn,std=bn+en"]
# Channel counts of these models that 32 groups do not divide (gn_g32 cannot fit).
GN32_MISFITS = {"resnet8", "resnet20", "resnet10", "mobilenet_v2", "shufflenet_v2_x1_5"}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", PRESETS)
def test_model_trains_one_step_with_every_preset(name, norm):
    if norm == "gn" and name in GN32_MISFITS:
        with pytest.raises(ValueError, match="not divisible by 32"):
            build_model(name, norm=norm)
        return
    if name == "mlp" and norm == "in":
        pytest.skip("instance statistics need spatial positions; an MLP's features have none")
    model = build_model(name, num_classes=10, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, HeterologousNorm)]
    assert norms and all(m.spec == parse_spec(norm) for m in norms)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", sorted(LAYER_CLASSES))
def test_model_trains_one_step_with_frn_and_brn(name, norm):
    model = build_model(name, num_classes=10, norm=norm)
    norms = [m for m in model.modules() if is_norm(m)]
    assert norms and all(type(m) is LAYER_CLASSES[norm] for m in norms)
    tlus = sum(isinstance(m, TLU) for m in model.modules())
    assert (
        tlus > 0 if norm == "frn" and not name.startswith(("tv_", "mobilenet", "shufflenet", "densenet")) else tlus == 0
    )
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("size", "channels"), [(8, 1), (28, 1), (32, 3)])
@pytest.mark.parametrize("name", ["resnet8", "mlp", "densenet121"])
def test_models_take_small_images_with_one_or_three_channels(name, size, channels):
    model = build_model(name, num_classes=7, norm="hn", in_channels=channels, image_size=size).eval()
    assert model(torch.randn(1, channels, size, size)).shape == (1, 7)


def test_state_dict_round_trip_gives_the_same_eval_outputs():
    source = build_model("resnet8", norm="hn_g8")
    source(torch.randn(4, 3, 16, 16))
    target = build_model("resnet8", norm="hn_g8")
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18")
    first = model.stem[0]
    assert (first.kernel_size, first.stride, sum(p.numel() for p in model.parameters())) == ((3, 3), (1, 1), 11173962)


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError, match="Did you mean resnet8"):
        build_model("resnet9")


@pytest.mark.parametrize("name", ["resnet8", "tv_resnet18"])
@pytest.mark.parametrize(
    "norm",
    [torch.nn.BatchNorm2d, functools.partial(torch.nn.GroupNorm, 4), lambda channels: torch.nn.GroupNorm(2, channels)],
    ids=["class", "partial", "lambda"],
)
def test_model_takes_a_norm_class_or_partial(name, norm):
    model = build_model(name, num_classes=10, norm=norm)
    expected = norm if isinstance(norm, type) else torch.nn.GroupNorm
    assert not any(isinstance(m, HeterologousNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm)]
    assert norms and all(type(m) is expected for m in norms)
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_a_norm_callable_that_cannot_fit_names_the_model():
    with pytest.raises(ValueError, match=r"Cannot build resnet8 with norm 'GroupNorm'.*divisible"):
        build_model("resnet8", norm=functools.partial(torch.nn.GroupNorm, 32))


def test_resnet10_has_the_papers_four_stages_down_to_4x4_maps():
    model = build_model("resnet10", norm="bn")
    shapes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda _module, _inputs, out: shapes.append(tuple(out.shape[1:])))
    model(torch.randn(2, 3, 32, 32))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
