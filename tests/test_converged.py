"""experiments.converged: the plateau rule, the class-balanced subset, the grid's commands and the report
read back from run directories."""

import json
import shutil

import numpy as np
import pytest

from experiments import converged
from experiments.converged import GRID, Run, plateau, write_subset


def test_a_flat_tail_is_a_plateau_starting_where_the_run_came_within_half_a_point_of_its_best():
    accuracies = [0.30, 0.50, 0.60, 0.654, 0.655, 0.657, 0.656, 0.658, 0.657]
    verdict = plateau(accuracies)
    assert (verdict.reached, verdict.start) == (True, 4)  # round 4 is the first within 0.5 points of 0.658


def test_a_tail_still_rising_a_point_per_round_is_no_plateau():
    verdict = plateau([0.30, 0.40, 0.50, 0.51, 0.52, 0.53, 0.54])
    assert (verdict.reached, verdict.start) == (False, 7)
    assert verdict.slope == pytest.approx(0.01)


def test_a_tail_that_fell_more_than_half_a_point_below_the_best_is_no_plateau():
    assert plateau([0.30, 0.70, 0.60, 0.60, 0.60, 0.60, 0.60]).reached is False


def test_the_subset_keeps_the_first_images_of_every_class_in_file_order_and_the_whole_test_set(tmp_path):
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0], dtype=np.uint8)
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    source = tmp_path / "source.npz"
    np.savez(source, x_train=images, y_train=labels, x_test=images[:4], y_test=labels[:4])
    subset = np.load(write_subset(source, tmp_path / "subset.npz", per_class=2))
    assert subset["y_train"].tolist() == [0, 1, 0, 2, 1, 2]  # indices 0, 1, 2, 3, 4, 6
    assert subset["x_train"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 6]
    assert subset["x_test"].shape == (4, 2, 2, 3) and subset["y_test"].tolist() == [0, 1, 0, 2]


def test_every_run_of_the_grid_is_one_fedhn_compare_of_its_norm_with_its_overrides():
    assert len({run.name for run in GRID}) == len(GRID)
    command = Run("hetero", "fixbn", 2).group.command()
    overrides = command[command.index("--run-config", command.index("--run-config") + 1) + 1]
    assert command[command.index("--norms") + 1] == "bn"
    assert "num-server-rounds=50" in overrides and "freeze-stats-after=25" in overrides  # hetero runs 50 rounds
    assert "dirichlet-alpha=0.1" in overrides and overrides.endswith("seed=2")
    assert command[-2:] == ["--out", "docs/results/converged/hetero/fixbn-s2"]


def test_every_run_of_the_grid_is_a_valid_run_config():
    configs = {run.name: run.config() for run in GRID}
    assert (configs["b2-4/fixbn-s1"].num_server_rounds, configs["b2-4/fixbn-s1"].freeze_stats_after) == (30, 15)
    assert (configs["hetero/fixbn-s0"].num_server_rounds, configs["hetero/fixbn-s0"].freeze_stats_after) == (50, 25)
    assert configs["hetero/bn-s0"].num_server_rounds == 50
    assert configs["hetero/fedbn-s0"].stats_aggregation == "local"
    assert (configs["shift/bn-s0"].feature_shift, configs["b128/hn-s0"].batch_sizes) == ("auto", (128,))
    assert {c.model for c in configs.values()} == {"resnet10"}
    fedwon = {setting: configs[f"{setting}/fedwon-s0"] for setting in ("b2-4", "hetero")}
    assert {(c.norm, c.conv, c.agc_clip) for c in fedwon.values()} == {("none", "ws", 0.16)}
    assert (fedwon["b2-4"].lr, fedwon["b2-4"].lr_scaling) == (1.6, "linear")  # FedWon's lr differs by setting
    assert (fedwon["hetero"].lr, fedwon["hetero"].lr_scaling) == (0.2, "sqrt")
    assert (configs["b2-4/hn_g8_lr0.4-s0"].norm, configs["b2-4/hn_g8_lr0.4-s0"].lr) == ("hn_g8", 0.4)
    assert (configs["hetero/bn_lr0.4-s0"].lr, configs["hetero/bn_lr0.4-s0"].lr_scaling) == (0.4, "linear")


def _write_run(run: Run, accuracies: list[float], client_mean: float, rounds: int | None = None, **changes) -> None:
    """The files of ``run`` after ``accuracies`` rounds of ``rounds`` (default: as many), its config the run's
    definition with ``changes``."""
    run_dir = run.group.run_dir(run.group.norms[0])
    run_dir.mkdir(parents=True)
    config = run.config().to_dict() | {"num-server-rounds": rounds or len(accuracies)} | changes
    (run_dir / "config.json").write_text(json.dumps({"run_config": config}))
    rounds = [
        {
            "round": r,
            "test_accuracy": a,
            "wall_time": 30.0 + 10.0 * r,
            "client_evaluation": {
                "clients": 10,
                "mean_accuracy": client_mean,
                "worst_10pct_accuracy": client_mean - 0.1,
            },
        }
        for r, a in enumerate(accuracies, 1)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """RUNS in a fresh directory under the repository's outputs/ (commands name their --out relative to it)."""
    monkeypatch.setattr(converged, "RUNS", converged.ROOT / "outputs" / f"test-converged-{tmp_path.name}")
    yield converged.RUNS
    for root in (converged.RUNS, converged.RUNS.with_name(converged.RUNS.name + "-pilot")):
        shutil.rmtree(root, ignore_errors=True)


def test_the_report_gives_mean_and_std_over_seeds_and_the_paired_differences(runs_dir):
    flat = [0.2, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6]
    for seed, (bn, hn) in enumerate(((0.60, 0.64), (0.602, 0.63))):
        _write_run(Run("b2-4", "bn", seed), flat[:-1] + [bn], client_mean=0.5)
        _write_run(Run("b2-4", "hn_g8", seed), flat[:-1] + [hn], client_mean=0.7)
    _write_run(Run("b2-4", "bn_lr0.4", 0), flat[:-1] + [0.65], client_mean=0.6)
    _write_run(Run("b2-4", "hn_g8_lr0.4", 0), flat[:-1] + [0.66], client_mean=0.6)
    _write_run(Run("b2-4", "gn_g8", 0), [0.1, 0.2], client_mean=0.3, rounds=3)  # unfinished: 2 of 3 rounds
    text = converged.report(plot_dir=None)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["| bn"] == "| bn | 2 | 60.1 ± 0.1 | 60.1 ± 0.1 | 2/2 | 3/3 | 0.00/0.04 | 50.0 ± 0.0 | 40.0 ± 0.0 | 10 |"
    assert rows["| hn_g8"].startswith("| hn_g8 | 2 | 63.5 ± 0.7 |")
    assert rows["| hn_g8 - bn"] == "| hn_g8 - bn | s0 +4.0, s1 +2.8 | +3.4 |"
    assert rows["| hn_g8_lr0.4 - bn_lr0.4"] == "| hn_g8_lr0.4 - bn_lr0.4 | s0 +1.0 | +1.0 |"  # each pair at its own lr
    assert "| gn_g8 |" not in text  # not finished
    assert f"not finished yet: {len(GRID) - 6} of {len(GRID)}" in text


def test_each_pilot_gets_its_own_section_and_its_runs_do_not_count_as_grid_runs(runs_dir):
    _write_run(Run("b2-4", "bn", 0, pilot=True), [0.3, 0.4, 0.5], client_mean=0.5)
    _write_run(Run("hetero", "hn_g8", 0, pilot=True), [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], client_mean=0.5)
    text = converged.report(plot_dir=None)
    b2_4 = text[text.index("## Pilot: batch 2-4, IID, 3 rounds") : text.index("## Pilot: batch 2..128")]
    assert "| bn | 1 | 50.0 | 50.0 | 0/1 | 3 | - |" in b2_4 and "| hn_g8 |" not in b2_4
    hetero = text[text.index("## Pilot: batch 2..128, Dir 0.1, 6 rounds") :]
    assert "| hn_g8 | 1 | 70.0 | 70.0 | 0/1 | 6 | 10.00 |" in hetero
    assert "## batch 2-4, IID," not in text
    assert f"not finished yet: {len(GRID)} of {len(GRID)}" in text
    assert "\n\n\n" not in text  # a section without a pair has no empty pair table


def test_a_run_that_ran_with_another_config_than_its_definition_is_stale_not_finished(runs_dir, capsys):
    fedwon = Run("b2-4", "fedwon", 0)
    _write_run(fedwon, [0.2, 0.3, 0.3, 0.3, 0.3, 0.3], client_mean=0.3, lr=0.1)  # the definition has lr=1.6
    _write_run(Run("b2-4", "bn", 0), [0.2, 0.3, 0.3, 0.3, 0.3, 0.3], client_mean=0.3, **{"round-timeout": 60.0})
    assert fedwon.stale(fedwon.results()) == "lr: 0.1 -> 1.6"
    assert not fedwon.finished() and Run("b2-4", "bn", 0).finished()  # a resumable key may differ
    assert "| fedwon |" not in converged.report(plot_dir=None)
    converged.main(["--list"])
    assert "b2-4/fedwon-s0 (stale: lr: 0.1 -> 1.6)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        converged.main(["--run", "--only", "b2-4/fedwon-s0"])
    error = capsys.readouterr().err
    assert "b2-4/fedwon-s0 on disk ran with another config (lr: 0.1 -> 1.6)" in error
    assert f"remove {(runs_dir / 'b2-4' / 'fedwon-s0').relative_to(converged.ROOT)} (git rm -r)" in error
