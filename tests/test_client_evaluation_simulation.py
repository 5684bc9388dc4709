"""End to end: a real `flwr run` (through fedhn compare) with feature-shift clients, FedBN local
statistics and per-client evaluation on packed nodes, 2 rounds, checked in metrics.jsonl, the
report and (with the tensorboard extra) the run's event files."""

import json
from pathlib import Path

import pytest
import torch

from fedhn.app import task
from fedhn.app.config import RunConfig
from fedhn.app.tensorboard_log import tensorboard_available
from fedhn.training import evaluate
from strategies.client_metrics import worst_fraction_mean
from tests.conftest import compare, read_rounds

pytestmark = pytest.mark.simulation
SHIFTS = ("invert", "rotation")


def _check_round(line: dict, config: RunConfig) -> None:
    evaluation = line["client_evaluation"]
    assert (evaluation["clients"], evaluation["failed"]) == (4, 0)
    accuracies = {int(c): a for c, a in evaluation["accuracies"].items()}
    assert sorted(accuracies) == [0, 1, 2, 3]
    sizes = {c: len(task.client_data(config, c, 4).test_labels) for c in accuracies}
    assert sizes == {c: task.local_test_size(config, len(task.partitions(config, 4)[c])) for c in accuracies}
    weighted = sum(sizes[c] * accuracies[c] for c in accuracies) / sum(sizes.values())
    assert evaluation["accuracy"] == pytest.approx(weighted)
    assert evaluation["mean_accuracy"] == pytest.approx(sum(accuracies.values()) / 4)
    assert evaluation["worst_10pct_accuracy"] == pytest.approx(worst_fraction_mean(list(accuracies.values())))
    assert set(line["shift_accuracy"]) == set(SHIFTS) == set(line["shift_loss"])


def _check_final_model(out: Path, line: dict, config: RunConfig) -> None:
    """Central accuracy untransformed and per transformation is the final model's; clients used their own norms."""
    model = task.new_model(config)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert evaluate(model, *task.test_data(config))[1] == pytest.approx(line["test_accuracy"])
    for name in SHIFTS:
        loss, accuracy = evaluate(model, *task.test_data(config, name))
        assert (line["shift_accuracy"][name], line["shift_loss"][name]) == (
            pytest.approx(accuracy),
            pytest.approx(loss),
        )
    for client, reported in line["client_evaluation"]["losses"].items():
        data = task.client_data(config, int(client), 4)
        # FedBN: the client evaluated with its own norm layers, not the server's pooled copy
        assert reported != pytest.approx(evaluate(model, data.test_images, data.test_labels)[0], rel=1e-4)


def _check_tensorboard(out: Path, lines: list[dict]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    central = [(e.step, e.value) for e in events.Scalars("central/accuracy")]
    assert central == [(line["round"], pytest.approx(line["test_accuracy"])) for line in lines]
    assert events.Scalars("client/2/accuracy")[-1].value == pytest.approx(
        lines[-1]["client_evaluation"]["accuracies"]["2"]
    )
    assert [events.Scalars(f"client/{c}/batch_size")[0].value for c in range(4)] == [2, 8, 2, 8]
    assert any(tag.startswith("stat_spread/") for tag in events.Tags()["scalars"])
    assert len(events.Scalars("central/accuracy_invert")) == 2


def test_feature_shift_fedbn_clients_evaluate_on_their_own_splits(tmp_path, tiny_npz):
    with_tensorboard = tensorboard_available()
    settings = (
        f"dataset='{tiny_npz}' num-server-rounds=2 batch-sizes='2,8' feature-shift='{','.join(SHIFTS)}' "
        f"stats-aggregation='local' fraction-evaluate=1.0 local-test-fraction=0.25 "
        f"tensorboard={str(with_tensorboard).lower()} min-train-nodes=4"
    )
    result = compare(tmp_path, "bn", "--num-supernodes", "2", "--clients-per-node", "2", "-c", settings)
    assert result.exit_code == 0, result.output
    assert "client accuracy" in result.output
    out = tmp_path / "bn"
    lines = read_rounds(out)
    assert [line["round"] for line in lines] == [1, 2] and all(line["clients"] == 4 for line in lines)
    config = RunConfig.from_mapping(json.loads((out / "config.json").read_text())["run_config"])
    for line in lines:
        _check_round(line, config)
    _check_final_model(out, lines[-1], config)
    if with_tensorboard:
        _check_tensorboard(out, lines)
    summary = (tmp_path / "summary.md").read_text()
    assert "Per-client evaluation" in summary and "| norm | untransformed | invert | rotation |" in summary
