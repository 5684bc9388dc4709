"""Federated precise statistics: pooled client sums give the statistics of the union of their data."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhn.calibration import apply_sums, calibrated_layers, channel_sums, pool_sums
from fedhn.models import build_model
from fedhn.norms import norm_layer


@pytest.mark.parametrize("norm", ["bn", "hn", "hn_g4", "mean=bn,std=bn+en", "sn"])
def test_pooled_client_sums_equal_the_central_computation(norm):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, norm=norm, in_channels=1, image_size=8)
    images = torch.randn(60, 1, 8, 8) * 2 + 0.5
    parts = [images[:7], images[7:30], images[30:]]  # unequal clients
    pooled = pool_sums(channel_sums(model, part, batch_size=8) for part in parts)
    central = channel_sums(model, images, batch_size=60)
    federated, centralized = build_model("resnet8", norm=norm, in_channels=1, image_size=8), model
    federated.load_state_dict(model.state_dict())
    assert apply_sums(federated, pooled) == apply_sums(centralized, central) == list(calibrated_layers(model))
    for key, value in centralized.state_dict().items():
        torch.testing.assert_close(federated.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_calibrated_statistics_are_those_of_the_layer_input():
    """One conv + HN: running mean = each channel's mean, running var = the unbiased variance of all values of
    the layer's input over the data (checked with NumPy)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), norm_layer("mean=bn,std=en_g2")(8)).double()
    images = torch.randn(20, 3, 6, 6, dtype=torch.float64) + 1
    apply_sums(model, pool_sums([channel_sums(model, images[:5]), channel_sums(model, images[5:])]))
    features = model[0](images).detach().numpy().transpose(1, 0, 2, 3).reshape(8, -1)
    groups = features.reshape(2, -1)
    np.testing.assert_allclose(model[1].running_mean.numpy(), features.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(model[1].running_var.numpy(), groups.var(axis=1, ddof=1), rtol=1e-10)


def test_models_without_running_statistics_have_nothing_to_calibrate():
    model = build_model("resnet8", norm="gn_g4")
    assert calibrated_layers(model) == {} and channel_sums(model, torch.randn(2, 3, 8, 8)) == {}


def test_sums_of_another_model_are_refused():
    model = build_model("resnet8", norm="hn")
    with pytest.raises(ValueError, match="no entry for layer 'stem.1'"):
        apply_sums(model, {})
