"""fedhn compare's planning: every run is validated before any Flower process starts."""

import pytest

from fedhn.app.config import ConfigError
from fedhn.launch.compare import Federation, parse_run_config_args, plan_runs, run_label
from tests.conftest import PROJECT


def test_run_config_args_merge_files_and_key_values_in_order(tmp_path):
    (tmp_path / "a.toml").write_text('lr = 0.5\nnorm = "bn"\n')
    merged = parse_run_config_args([str(tmp_path / "a.toml"), "lr=0.2 norm='mean=bn,std=bn+en'"])
    assert merged == {"lr": 0.2, "norm": "mean=bn,std=bn+en"}


def test_missing_run_config_file_is_named():
    with pytest.raises(ConfigError, match="absent.toml does not exist"):
        parse_run_config_args(["absent.toml"])


def test_each_norm_gets_its_own_out_dir_and_absolute_paths(tmp_path):
    plans = plan_runs(PROJECT, ["bn", "mean=bn,std=bn+en"], {}, tmp_path, Federation(num_supernodes=4))
    assert [p.out_dir for p in plans.values()] == [str(tmp_path / "bn"), str(tmp_path / "mean-bn_std-bn+en")]
    assert all(p.data_dir.startswith("/") for p in plans.values())
    assert run_label("mean=bn,std=bn+en") == "mean-bn_std-bn+en"


def test_all_problems_of_all_runs_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        plan_runs(PROJECT, ["gn_g32", "hm"], {}, tmp_path, Federation(num_supernodes=4))
    assert "norm 'hm'" in str(info.value) and "Did you mean 'hn'" in str(info.value)


def test_existing_results_need_resume(tmp_path):
    (tmp_path / "bn").mkdir()
    (tmp_path / "bn" / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(ConfigError, match="already holds a run; set resume = true"):
        plan_runs(PROJECT, ["bn"], {}, tmp_path, Federation(num_supernodes=4))
    assert plan_runs(PROJECT, ["bn"], {"resume": True}, tmp_path, Federation(num_supernodes=4))


@pytest.mark.parametrize(
    ("federation", "fragment"),
    [
        (Federation(num_supernodes=0), "--num-supernodes and --cpus-per-client must be >= 1"),
        (Federation(num_supernodes=1), "below min-train-nodes"),
        (Federation(num_supernodes=5000), "5000 clients but digits has 1437 training examples"),
    ],
)
def test_impossible_federations_are_refused(tmp_path, federation, fragment):
    with pytest.raises(ConfigError) as info:
        plan_runs(PROJECT, ["bn"], {}, tmp_path, federation)
    assert fragment in str(info.value)
