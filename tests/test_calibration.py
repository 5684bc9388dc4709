"""Federated precise statistics: pooled client sums, layer by layer, give the population statistics of
the union of the clients' data as the calibrated network computes them."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhn.calibration import apply_sums, calibrate, calibrated_layers, calibration_order, layer_sums, pool_sums
from fedhn.models import build_model
from fedhn.norms import norm_layer
from fedhn.training import evaluate


def sequential_population_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """The reference: one eval forward of all images as one batch, each layer setting its statistics from
    its own input (NumPy-free float64 moments) before it normalizes, so later layers see calibrated inputs."""

    def set_statistics(layer, inputs):
        x = inputs[0].reshape(inputs[0].shape[0], inputs[0].shape[1], -1).double()
        layer.set_population_statistics(x.mean(dim=(0, 2)), x.var(dim=(0, 2), unbiased=False), x[:, 0].numel())

    handles = [layer.register_forward_pre_hook(set_statistics) for layer in calibrated_layers(model).values()]
    with torch.no_grad():
        model.eval()
        model(images)
    for handle in handles:
        handle.remove()


def trained(norm: str) -> tuple[nn.Module, torch.Tensor]:
    """resnet8 whose running statistics are far from the data's (mean 0.5, std 2)."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, norm=norm, in_channels=1, image_size=8)
    return model, torch.randn(60, 1, 8, 8) * 2 + 0.5


@pytest.mark.parametrize("norm", ["bn", "hn", "hn_g4", "mean=bn,std=bn+en", "sn", "brn"])
def test_federated_calibration_equals_the_central_population_statistics(norm):
    model, images = trained(norm)
    parts = [images[:7], images[7:30], images[30:]]  # unequal clients
    federated, central = build_model("resnet8", norm=norm, in_channels=1, image_size=8), model
    federated.load_state_dict(model.state_dict())
    order = calibration_order(federated, images[:1])
    for layer in order:  # the server's loop: one message round per layer
        assert apply_sums(federated, pool_sums(layer_sums(federated, part, layer, batch_size=8) for part in parts)) == [
            layer
        ]
    sequential_population_statistics(central, images)
    assert sorted(order) == sorted(calibrated_layers(model)) and len(order) == 9
    for key, value in central.state_dict().items():
        torch.testing.assert_close(federated.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_calibration_is_a_fixed_point_and_makes_eval_outputs_normalized():
    model, images = trained("bn")
    order = calibrate(model, images)
    assert order == calibration_order(model, images[:1])
    state = {key: value.clone() for key, value in model.state_dict().items()}
    calibrate(model, images)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=1e-5, atol=1e-6, msg=key)
    layer, inputs = calibrated_layers(model)[order[-1]], []
    handle = layer.register_forward_pre_hook(lambda _m, i: inputs.append(i[0]))
    evaluate(model, images, torch.zeros(60, dtype=torch.long))
    handle.remove()
    torch.testing.assert_close(inputs[0].mean(dim=(0, 2, 3)), layer.running_mean, rtol=1e-4, atol=1e-5)


def test_calibrated_statistics_are_those_of_the_layer_input():
    """One conv + HN: running mean = each channel's mean, running var = the unbiased variance of all values of
    the layer's input over the data (checked with NumPy)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), norm_layer("mean=bn,std=en_g2")(8)).double()
    images = torch.randn(20, 3, 6, 6, dtype=torch.float64) + 1
    apply_sums(model, pool_sums([layer_sums(model, images[:5], "1"), layer_sums(model, images[5:], "1")]))
    features = model[0](images).detach().numpy().transpose(1, 0, 2, 3).reshape(8, -1)
    groups = features.reshape(2, -1)
    np.testing.assert_allclose(model[1].running_mean.numpy(), features.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(model[1].running_var.numpy(), groups.var(axis=1, ddof=1), rtol=1e-10)


def test_frn_models_have_nothing_to_calibrate():
    model, images = trained("frn")
    assert calibrated_layers(model) == {} and calibrate(model, images) == []


def test_models_without_running_statistics_have_nothing_to_calibrate():
    model = build_model("resnet8", norm="gn_g4")
    assert calibrated_layers(model) == {} and calibrate(model, torch.randn(2, 3, 8, 8)) == []


def test_sums_of_another_model_are_refused():
    model = build_model("resnet8", norm="hn")
    sums = layer_sums(model, torch.randn(2, 3, 8, 8), "stem.1")
    with pytest.raises(ValueError, match="layer 'other.1', which the model has no"):
        apply_sums(model, {key.replace("stem", "other"): value for key, value in sums.items()})
    with pytest.raises(ValueError, match="lack count, sum or sumsq"):
        apply_sums(model, {"stem.1.sum": sums["stem.1.sum"]})
    with pytest.raises(ValueError, match="has 16 channels, its statistics"):
        apply_sums(model, sums | {"stem.1.sum": torch.zeros(3)})
