"""replace_norms swaps the norm layers of any model and names the layer that a spec cannot fit."""

import pytest
import torch
import torchvision
from torch import nn

from fedhn.norms import HeterologousNorm, replace_norms


def test_torchvision_resnet18_gets_hn_everywhere():
    model = torchvision.models.resnet18(num_classes=10)
    channels = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    replace_norms(model, "hn")
    norms = [m for m in model.modules() if isinstance(m, HeterologousNorm)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [m.num_features for m in norms] == channels
    assert all(m.spec.name == "hn" for m in norms)
    model(torch.randn(2, 3, 32, 32)).sum().backward()


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
