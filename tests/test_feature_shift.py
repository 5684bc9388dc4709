"""Feature-shift clients: each transformation against its formula, fixed and seeded, applied to the
client's training and local test images and, once per transformation, to the central test set."""

import numpy as np
import pytest
import torch

from fedhn.app import task
from fedhn.app.config import ConfigError, RunConfig
from fedhn.data.feature_shift import AUTO, TRANSFORMS, FeatureShift, parse_feature_shift


def _images(channels: int = 3, n: int = 6, size: int = 8) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def _apply(name: str, images: torch.Tensor, strength: float) -> torch.Tensor:
    return TRANSFORMS[name][0](images, strength, torch.Generator().manual_seed(1))


def test_values_parse_to_transformation_names():
    assert parse_feature_shift("none") == ()
    assert parse_feature_shift("auto") == AUTO == tuple(TRANSFORMS)
    assert parse_feature_shift("invert, blur") == ("invert", "blur")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("invrt", "nearest: 'invert'"), ("invert,invert", "twice"), (",", "give none, auto")],
)
def test_bad_values_name_the_problem(defaults, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_mapping(defaults | {"feature-shift": value})


def test_invert_and_brightness_follow_their_formulas():
    images = _images()
    assert torch.equal(_apply("invert", images, 0.0), 255 - images)
    factor = 1.4 + 0.4 * 0.5
    expected = (images.double() * factor).clamp(0, 255)
    assert (_apply("brightness", images, 0.5).double() - expected).abs().max() <= 1


def test_contrast_blends_towards_the_gray_mean():
    images = _images()
    factor = 0.6 - 0.3 * 0.25
    gray = (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).double()
    mean = gray.flatten(1).mean(1).view(-1, 1, 1, 1)
    expected = (factor * images.double() + (1 - factor) * mean).clamp(0, 255)
    assert (_apply("contrast", images, 0.25).double() - expected).abs().max() <= 1.5


def test_grayscale_gives_equal_channels_of_the_luma_and_keeps_one_channel_images():
    images = _images()
    gray = _apply("grayscale", images, 0.0)
    luma = 0.2989 * images[:, 0].double() + 0.587 * images[:, 1].double() + 0.114 * images[:, 2].double()
    assert gray.shape == images.shape and torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert (gray[:, 0].double() - luma).abs().max() <= 1
    one = _images(channels=1)
    assert torch.equal(_apply("grayscale", one, 0.0), one)


def test_blur_keeps_the_mean_and_lowers_the_variation():
    images = _images(n=4, size=16)
    blurred = _apply("blur", images, 1.0).double()
    assert blurred.shape == images.shape
    assert (blurred.mean() - images.double().mean()).abs() < 2.0
    assert blurred.diff(dim=-1).abs().mean() < 0.6 * images.double().diff(dim=-1).abs().mean()


def test_rotation_by_its_angle_moves_a_corner_pixel():
    images = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    images[0, 0, 4, 8] = 255  # on the horizontal axis through the centre
    rotated = _apply("rotation", images, 1.0)  # 60 degrees counter-clockwise
    y, x = (rotated[0, 0] == 255).nonzero()[0].tolist()
    angle = np.degrees(np.arctan2(4 - y, x - 4))
    assert abs(angle - 60) < 10


def test_noise_is_fixed_per_seed_and_part_and_has_its_std():
    images = torch.full((50, 3, 8, 8), 128, dtype=torch.uint8)
    shift = FeatureShift(("noise",), seed=3)
    first, again = shift.apply("noise", images, 0), shift.apply("noise", images, 0)
    assert torch.equal(first, again) and not torch.equal(first, shift.apply("noise", images, 1))
    assert 20 <= (first.double() - 128).std() <= 40


def test_strengths_are_fixed_by_the_seed():
    images = _images()
    assert torch.equal(
        FeatureShift(AUTO, 0).apply("contrast", images, 0), FeatureShift(AUTO, 0).apply("contrast", images, 5)
    )
    assert not torch.equal(
        FeatureShift(AUTO, 0).apply("contrast", images, 0), FeatureShift(AUTO, 1).apply("contrast", images, 0)
    )


def test_client_groups_see_their_transformation_and_the_central_test_set_each_one(defaults, tiny_npz):
    config = RunConfig.from_mapping(defaults | {"dataset": str(tiny_npz), "feature-shift": "invert,contrast"})
    plain = RunConfig.from_mapping(defaults | {"dataset": str(tiny_npz)})
    data = task.dataset(config)
    shift = FeatureShift(("invert", "contrast"), config.seed)
    for client in range(4):
        index = torch.from_numpy(task.partitions(config, 4)[client])
        name = ("invert", "contrast")[client % 2]
        expected = data.normalized(shift.apply(name, data.x_train[index], f"{client}-train"))
        torch.testing.assert_close(task.client_data(config, client, 4).images, expected, rtol=0, atol=0)
        torch.testing.assert_close(
            task.client_data(config, client, 4).labels, task.client_data(plain, client, 4).labels
        )
    inverted, labels = task.test_data(config, "invert")
    torch.testing.assert_close(inverted, data.normalized(255 - data.x_test), rtol=0, atol=0)
    assert torch.equal(labels, data.y_test)
    torch.testing.assert_close(task.test_data(config)[0], task.test_data(plain)[0], rtol=0, atol=0)
