"""TensorBoard event files of a run, read back with tensorboard's EventAccumulator."""

import pytest

from fedhn.app.tensorboard_log import TensorBoardLog, tensorboard_available
from strategies import RoundReport

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_round_scalar_is_written_and_read_back(tmp_path):
    assert tensorboard_available()
    log = TensorBoardLog(tmp_path)
    for server_round in (1, 2):
        report = RoundReport(server_round, accepted=2, train_loss=1.5 / server_round)
        report.client_train = {0: {"batch-size": 2, "steps": 7, "train-loss": 1.0}, 3: {"batch-size": 8, "steps": 2}}
        report.stat_spread = {"layer1.bn.running_mean": 0.25 * server_round}
        report.evaluation = {
            "accuracy": 0.5,
            "loss": 0.7,
            "mean_accuracy": 0.45,
            "worst_10pct_accuracy": 0.25 * server_round,
            "accuracies": {"0": 0.25, "3": 0.75},
            "losses": {"0": 1.25, "3": 0.5},
        }
        record = {"round": server_round, "test_accuracy": 0.1 * server_round, "test_loss": 2.0}
        log.log_round(record | {"shift_accuracy": {"invert": 0.3}, "shift_loss": {"invert": 1.75}}, report)
    log.close()
    scalars = _scalars(tmp_path)
    assert scalars["central/accuracy"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert scalars["clients/worst_10pct_accuracy"] == [(1, 0.25), (2, 0.5)]
    assert scalars["central/accuracy_invert"][0] == (1, pytest.approx(0.3))
    assert scalars["central/loss_invert"][0] == (1, 1.75)
    assert scalars["train/loss"] == [(1, 1.5), (2, 0.75)]
    assert scalars["client/3/accuracy"][0] == (1, 0.75) and scalars["client/0/loss"][0] == (1, 1.25)
    assert scalars["client/0/batch_size"][0] == (1, 2.0) and scalars["client/3/steps"][1] == (2, 2.0)
    assert scalars["client/0/train_loss"][0] == (1, 1.0) and "client/3/train_loss" not in scalars
    assert scalars["stat_spread/layer1.bn.running_mean"] == [(1, 0.25), (2, 0.5)]
    assert scalars["clients/accuracy"][0] == (1, 0.5) and scalars["clients/mean_accuracy"][0] == (
        1,
        pytest.approx(0.45),
    )


def test_a_round_without_client_evaluation_has_central_scalars_only(tmp_path):
    log = TensorBoardLog(tmp_path)
    log.log_round({"round": 1, "test_accuracy": 0.5, "test_loss": 1.0}, RoundReport(1))
    log.close()
    assert set(_scalars(tmp_path)) == {"central/accuracy", "central/loss"}


def test_compare_directories_overlay_one_run_per_norm(tmp_path):
    """fedhn compare gives each norm its own out-dir: tensorboard --logdir <out> sees one run per norm."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from fedhn.launch.compare import Federation, plan_runs
    from tests.conftest import PROJECT

    plans = plan_runs(PROJECT, ["bn", "gn_g4"], {"tensorboard": True}, tmp_path, Federation(num_supernodes=2))
    for norm, config in plans.items():
        log = TensorBoardLog(config.out_dir)
        log.log_round({"round": 1, "test_accuracy": 0.5 if norm == "bn" else 0.25, "test_loss": 1.0}, RoundReport(1))
        log.close()
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    runs.Reload()
    assert set(runs.Runs()) == {"bn", "gn_g4"}
    assert runs.Scalars("gn_g4", "central/accuracy")[0].value == 0.25
