"""Run-config validation: every key typed and checked, errors name the key, the allowed values and the nearest key."""

import tomllib

import pytest

from fedhn.app.config import KEYS, ConfigError, RunConfig
from tests.conftest import PROJECT


def test_pyproject_defaults_are_the_tables_defaults(defaults):
    assert list(defaults) == list(KEYS)
    assert defaults == RunConfig().to_dict()
    assert RunConfig.from_mapping(defaults) == RunConfig()


def test_comma_separated_keys_parse_to_tuples_and_back(defaults):
    config = RunConfig.from_mapping(defaults | {"batch-sizes": "2, 4,8", "fault-kinds": "nan,hang"})
    assert config.batch_sizes == (2, 4, 8) and config.fault_kinds == ("nan", "hang")
    assert config.to_dict()["batch-sizes"] == "2,4,8" and config.to_dict()["fault-kinds"] == "nan,hang"
    assert RunConfig.from_mapping(config.to_dict()) == config
    assert RunConfig.from_mapping(defaults | {"fault-kinds": ""}).fault_kinds == ()


@pytest.mark.parametrize("norm", ["frn", "brn", "BRN"])
def test_layer_presets_are_valid_norms(defaults, norm):
    assert RunConfig.from_mapping(defaults | {"norm": norm}).norm == norm


def test_integers_are_accepted_for_floats(defaults):
    assert RunConfig.from_mapping(defaults | {"lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"lr-scalling": "linear"}, ["unknown key 'lr-scalling'", "nearest valid key: 'lr-scaling'"]),
        (
            {"partitioner": "diriclet"},
            ["partitioner = 'diriclet'", "iid, dirichlet, pathological", "nearest: 'dirichlet'"],
        ),
        ({"stats-aggregation": "avg"}, ["pooled, mean, local"]),
        ({"norm": "hm"}, ["norm = 'hm'", "Did you mean 'hn'"]),
        ({"norm": "frm"}, ["norm = 'frm'", "Did you mean 'frn'"]),
        ({"brn-r-max": 0.5}, ["brn-r-max = 0.5: must be >= 1.0"]),
        ({"brn-d-max": -1.0}, ["brn-d-max = -1.0: must be >= 0.0"]),
        ({"brn-warmup-rounds": -1}, ["brn-warmup-rounds = -1: must be >= 0"]),
        ({"brn-relax-rounds": 1.5}, ["brn-relax-rounds = 1.5: expected int"]),
        ({"model": "resnet9"}, ["model = 'resnet9'", "nearest: 'resnet8'"]),
        ({"dataset": "cifar"}, ["dataset = 'cifar'", "path to a local .npz"]),
        ({"num-server-rounds": "ten"}, ["num-server-rounds = 'ten': expected int"]),
        ({"num-server-rounds": 0}, ["must be >= 1"]),
        ({"fraction-train": 1.5}, ["fraction-train = 1.5: must be in (0.0, 1.0]"]),
        ({"batch-sizes": "2,x"}, ["batch-sizes = '2,x': expected int values separated by commas, e.g. '2,4,8"]),
        ({"batch-sizes": "0,2"}, ["every batch size must be >= 1"]),
        ({"batch-sizes": ""}, ["batch-sizes = '': give at least one batch size"]),
        ({"batch-sizes": 8}, ["batch-sizes = 8: expected str"]),
        ({"fault-kinds": "nan,crash"}, ["unknown fault kinds ['crash']"]),
        ({"resume": True}, ["resume = true needs out-dir"]),
        ({"seed": True}, ["seed = True: expected int"]),
        ({"agc-clip": -0.01}, ["agc-clip = -0.01: must be >= 0.0"]),
        ({"conv": "wss"}, ["conv = 'wss'", "allowed values: plain, ws", "nearest: 'ws'"]),
        ({"freeze-stats-after": -1}, ["freeze-stats-after = -1: must be >= 0"]),
        ({"freeze-stats-after": 3, "norm": "gn_g4"}, ["norm = 'gn_g4' keeps no running statistics to freeze"]),
        ({"freeze-stats-after": 3, "norm": "none"}, ["norm = 'none' keeps no running statistics to freeze"]),
        ({"freeze-stats-after": 3, "stats-aggregation": "local"}, ["no global statistics to freeze at"]),
        (
            {"freeze-stats-after": 3, "calibrate-stats": True, "calibrate-every": 2},
            ["calibrated once, after round T", "set calibrate-every = 0"],
        ),
    ],
)
def test_bad_values_name_key_allowed_values_and_nearest(defaults, override, fragments):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(defaults | override)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        {"norm": "none", "conv": "ws", "agc-clip": 0.01},
        {"freeze-stats-after": 3, "norm": "sn"},
        {"freeze-stats-after": 3, "norm": "mean=bn,std=bn+en", "calibrate-stats": True},
    ],
)
def test_fedwon_and_fixbn_configurations_are_valid(defaults, override):
    config = RunConfig.from_mapping(defaults | override)
    assert config.to_dict() == defaults | override


def test_every_problem_is_reported_at_once(defaults):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(defaults | {"lr": "fast", "momentum": -1.0, "colour": "red"})
    assert str(info.value).count("\n  - ") == 3


def test_missing_key_is_named(defaults):
    del defaults["seed"]
    with pytest.raises(ConfigError, match="missing key 'seed'"):
        RunConfig.from_mapping(defaults)


@pytest.mark.parametrize("path", sorted((PROJECT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(defaults, path):
    with open(path, "rb") as file:
        RunConfig.from_mapping(defaults | tomllib.load(file))


@pytest.mark.parametrize("path", sorted((PROJECT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_run_config(defaults, path):
    with open(path, "rb") as file:
        RunConfig.from_mapping(defaults | tomllib.load(file))
