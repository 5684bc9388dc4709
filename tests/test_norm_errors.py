"""Bad configurations and inputs fail with messages that name the problem and the fix."""

import pytest
import torch

from fedhn.norms import HeterologousNorm, norm_layer


def test_groups_not_dividing_channels_fail_at_construction():
    with pytest.raises(
        ValueError, match=r"gn splits the channels into 32 groups, but 24 channels.*1, 2, 3, 4, 6, 8, 12, 24"
    ):
        norm_layer("gn_g32")(24)


def test_unknown_set_fails_at_construction():
    with pytest.raises(ValueError, match=r"Unknown pixel set 'bm'.*Valid sets: bn, in, ln"):
        HeterologousNorm(8, mean="bm", std="en")


def test_mixture_of_sets_that_coincide_for_the_channel_count_fails():
    with pytest.raises(ValueError, match="same set twice for 8 channels"):
        norm_layer("mean=bn,std=bn+en_g8")(8)


def test_wrong_channel_count_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 8, ...\), got \(2, 4, 3, 3\)"):
        norm_layer("hn")(8)(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("spec", ["bn", "hn"])
def test_batch_of_one_fc_sample_cannot_train_batch_sets(spec):
    layer = norm_layer(spec)(8)
    with pytest.raises(ValueError, match="single value per group.*in training.*at least 2 samples"):
        layer(torch.randn(1, 8))
    layer.eval()
    assert layer(torch.randn(1, 8)).shape == (1, 8)


def test_batch_of_one_image_trains_hn():
    assert norm_layer("hn")(8)(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


def test_instance_sets_need_spatial_positions():
    with pytest.raises(ValueError, match="mean set in holds a single value.*ln, gn_g<G>"):
        norm_layer("in")(8)(torch.randn(4, 8))
