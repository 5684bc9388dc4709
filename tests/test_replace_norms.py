"""replace_norms swaps the norm layers of any model and names the layer that a spec cannot fit."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fedhn.norms import BatchRenorm, FilterResponseNorm, HeterologousNorm, norm_layer, replace_norms


def test_torchvision_resnet18_gets_hn_everywhere():
    model = torchvision.models.resnet18(num_classes=10)
    channels = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    replace_norms(model, "hn")
    norms = [m for m in model.modules() if isinstance(m, HeterologousNorm)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [m.num_features for m in norms] == channels
    assert all(m.spec.name == "hn" for m in norms)
    model(torch.randn(2, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize(("spec", "kind"), [("frn", FilterResponseNorm), ("brn", BatchRenorm)])
def test_torchvision_resnet18_gets_frn_or_brn_everywhere(spec, kind):
    model = torchvision.models.resnet18(num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum, module.eps = 0.01, 1e-3
    channels = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    replace_norms(model, spec)
    norms = [m for m in model.modules() if isinstance(m, kind)]
    assert [m.num_features for m in norms] == channels and len(norms) == 20
    assert all(m.eps == 1e-3 for m in norms)
    assert all(m.momentum == 0.01 for m in norms) if kind is BatchRenorm else not hasattr(norms[0], "momentum")
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_frn_and_brn_layers_are_norms_that_replace_norms_swaps_back():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), FilterResponseNorm(8), BatchRenorm(8))
    replace_norms(model, "gn_g4")
    assert [type(m).__name__ for m in model] == ["Conv2d", "HeterologousNorm", "HeterologousNorm"]


def test_group_instance_and_channel_layer_norms_are_swapped_with_their_settings():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.GroupNorm(2, 8, eps=1e-3),
        nn.InstanceNorm2d(8),
        torchvision.models.convnext.LayerNorm2d(8),
        nn.BatchNorm2d(8, momentum=0.01),
        nn.LayerNorm(5),
    )
    replace_norms(model, "hn_g4")
    assert [type(m).__name__ for m in model] == ["Conv2d"] + ["HeterologousNorm"] * 4 + ["LayerNorm"]
    assert model[1].eps == 1e-3 and model[2].affine is False and model[4].momentum == 0.01


def test_a_norm_module_itself_is_replaced():
    assert isinstance(replace_norms(nn.BatchNorm1d(4), "en"), HeterologousNorm)


def test_spec_that_cannot_fit_names_the_layer():
    with pytest.raises(
        ValueError,
        match=r"Cannot normalize layer 'features.1.conv.2' \(16 channels\): gn splits the channels into 32 groups",
    ):
        replace_norms(torchvision.models.mobilenet_v2(), "gn_g32")


def test_replace_norms_takes_a_class_or_partial():
    model = torchvision.models.resnet18(num_classes=10)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    replace_norms(model, functools.partial(nn.GroupNorm, 8, eps=1e-3))
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(group_norms) == batch_norms and all(m.num_groups == 8 and m.eps == 1e-3 for m in group_norms)
    replace_norms(model, nn.BatchNorm2d)  # and back: the group norms are norms too
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norms
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_norm_layer_passes_keywords_to_a_callable():
    layer = norm_layer(nn.BatchNorm2d, momentum=0.3)(4)
    assert isinstance(layer, nn.BatchNorm2d) and layer.momentum == 0.3 and norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d


def test_fedhn_norms_does_not_import_torchvision():
    code = "import sys, fedhn.norms; assert 'torchvision' not in sys.modules, 'torchvision was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
