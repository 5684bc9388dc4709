"""The spec grammar: presets, general form, pixel sets and their error messages."""

import pytest
from typer.testing import CliRunner

from fedhn.launch.cli import app
from fedhn.norms import LAYER_CLASSES, LAYER_PRESETS, PRESETS, PixelSet, parse_pixel_set, parse_spec

BN, IN, LN = PixelSet(True, None), PixelSet(False, None), PixelSet(False, 1)


@pytest.mark.parametrize(
    ("spec", "mean", "std"),
    [
        ("bn", (BN,), (BN,)),
        ("in", (IN,), (IN,)),
        ("ln", (LN,), (LN,)),
        ("gn", (PixelSet(False, 32),), (PixelSet(False, 32),)),
        ("gn_g4", (PixelSet(False, 4),), (PixelSet(False, 4),)),
        ("en", (PixelSet(True, 1),), (PixelSet(True, 1),)),
        ("en_g8", (PixelSet(True, 8),), (PixelSet(True, 8),)),
        ("hn", (BN,), (PixelSet(True, 1),)),
        ("hn_g8", (BN,), (PixelSet(True, 8),)),
        ("sn", (BN, IN, LN), (BN, IN, LN)),
        ("mean=bn,std=bn+en", (BN,), (BN, PixelSet(True, 1))),
        ("mean=in, std=ln", (IN,), (LN,)),
        ("STD=en_g2,MEAN=gn_g2", (PixelSet(False, 2),), (PixelSet(True, 2),)),
    ],
)
def test_spec_parses_to_mean_and_std_sets(spec, mean, std):
    parsed = parse_spec(spec)
    assert (parsed.mean, parsed.std) == (mean, std)


@pytest.mark.parametrize(
    "spec", ["bn", "hn", "hn_g8", "sn", "gn", "gn_g4", "en_g2", "mean=bn,std=bn+en", "mean=in,std=en"]
)
def test_spec_name_round_trips(spec):
    assert parse_spec(parse_spec(spec).name) == parse_spec(spec)
    assert parse_spec(spec).name == spec


def test_every_preset_parses_with_a_group_count():
    for preset in PRESETS:
        spec = parse_spec(preset.name.replace("<G>", "4"))
        assert "+".join(map(str, spec.mean)) == preset.mean.replace("<G>", "4")


@pytest.mark.parametrize(
    ("spec", "fixed"),
    [
        ("bn", True),
        ("hn", True),
        ("en_g4", True),
        ("mean=bn,std=bn+en", True),
        ("gn", False),
        ("sn", False),
        ("mean=bn,std=bn+in", False),
    ],
)
def test_running_stats_only_means_fixed_at_inference(spec, fixed):
    assert parse_spec(spec).uses_running_stats_only is fixed


def test_grouped_sets_resolve_to_equal_homologous_sets():
    assert parse_pixel_set("en_g16").resolve(16) == BN
    assert parse_pixel_set("gn_g16").resolve(16) == IN
    assert parse_pixel_set("gn_g1").resolve(16) == LN


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("hm", "Did you mean 'hn'"),
        ("xx", "Unknown norm 'xx'"),
        ("mean=bn", "has no std set"),
        ("mean=bn,std=xn", "Unknown pixel set 'xn'"),
        ("mean=bn,std=bn++en", "joined by '+'"),
        ("mean=bn,std=en,std=bn", "each role once"),
        ("mean=bn,var=en", "mean=<sets>,std=<sets>"),
        ("mean=bn+bn,std=en", "same set twice"),
        ("gn_g0", "at least 1"),
        ("frn", "is a layer class of its own, not a (mean set, std set) pair; build it with fedhn.norms.norm_layer"),
        ("brm", "Did you mean 'brn'"),
    ],
)
def test_bad_specs_name_the_problem(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)


def test_groups_that_do_not_divide_list_the_divisors():
    with pytest.raises(ValueError, match=r"24 channels divide into 1, 2, 3, 4, 6, 8, 12, 24 groups"):
        parse_pixel_set("gn_g32").num_groups(24)


def test_every_layer_preset_has_its_class_and_is_listed_by_fedhn_norms():
    assert set(LAYER_CLASSES) == {preset.name for preset in LAYER_PRESETS}
    listing = CliRunner().invoke(app, ["norms"]).output
    for preset in LAYER_PRESETS:
        row = next(line for line in listing.splitlines() if line.startswith(preset.name + " "))
        assert preset.description in row and preset.inference in row
