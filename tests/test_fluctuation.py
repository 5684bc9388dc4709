"""Statistics fluctuation (section 4.6): what the hooks record, the fluctuation math, the command."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedhn.data import load_dataset
from fedhn.fluctuation import (
    STATISTICS,
    FluctuationRun,
    Neuron,
    StatisticsRecorder,
    fluctuation,
    fluctuation_table,
    parse_batch_sizes,
    parse_neurons,
    record_statistics,
)
from fedhn.launch.cli import app
from fedhn.models import build_model
from fedhn.norms import is_norm

NEURONS = (Neuron(1, 1), Neuron(1, 7), Neuron(3, 2), Neuron(4, 128))


@pytest.fixture
def mnist_like(tmp_path):
    """A tiny MNIST-shaped .npz: 28x28 grey images of 10 classes."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    images = (rng.uniform(0, 100, size=(60, 28, 28)) + labels[:, None, None] * 15).astype(np.uint8)
    path = tmp_path / "mnist-like.npz"
    np.savez(path, x_train=images[:48], y_train=labels[:48], x_test=images[48:], y_test=labels[48:])
    return path


@pytest.fixture
def restore_threads():
    """The command sets torch's thread count; give the test process its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("norm", ["bn", "hn"])
def test_recorded_statistics_equal_a_recomputation_from_the_norm_input(norm):
    torch.manual_seed(0)
    model = build_model("mlp", norm=norm, in_channels=1, image_size=28)
    norm_inputs = []
    for module in (m for m in model.modules() if is_norm(m)):
        module.register_forward_pre_hook(lambda module, inputs: norm_inputs.append(inputs[0].detach().clone()))
    recorder = StatisticsRecorder(model, NEURONS, steps=3)
    recorder.step = 1
    model(torch.randn(5, 1, 28, 28))

    expected = torch.zeros(len(STATISTICS), len(NEURONS))
    for k, neuron in enumerate(NEURONS):
        x = norm_inputs[neuron.layer - 1].double()
        column = x[:, neuron.index - 1]
        expected[:, k] = torch.stack([column.mean(), column.std(unbiased=False), x.mean(), x.std(unbiased=False)])
    torch.testing.assert_close(recorder.series[1], expected, rtol=1e-5, atol=1e-5)
    assert not recorder.series[0].any() and not recorder.series[2].any()


def test_training_records_every_step_until_the_cap(mnist_like):
    data = load_dataset(str(mnist_like))
    settings = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, norm="bn", seed=0, device=torch.device("cpu"))
    full = record_statistics(data, NEURONS, batch_size=8, epochs=2, max_steps=None, **settings)
    capped = record_statistics(data, NEURONS, batch_size=8, epochs=2, max_steps=5, **settings)
    assert (full.steps, full.epochs, full.lr) == (12, 2.0, pytest.approx(0.1 * 8 / 128))
    assert full.series.shape == (12, len(STATISTICS), len(NEURONS))
    assert np.isfinite(full.series).all() and (full.series[:, [1, 3]] > 0).all()
    np.testing.assert_array_equal(capped.series, full.series[:5])  # same seed, same first steps


def test_fluctuation_is_the_population_std_over_the_last_steps():
    series = np.random.default_rng(0).normal(size=(50, len(STATISTICS), 3))
    np.testing.assert_allclose(fluctuation(series, 20), np.std(series[-20:], axis=0))
    np.testing.assert_allclose(fluctuation(series, 500), np.std(series, axis=0))


def test_table_lists_each_statistic_and_the_bn_to_en_ratios():
    steps = np.arange(10)
    series = np.zeros((10, len(STATISTICS), 1), dtype=np.float32)
    series[:, 0, 0] = 1 + 3 * (steps % 2)  # BN_mean: std 1.5 around 2.5
    series[:, 1, 0] = 2 + 2 * (steps % 2)  # BN_std: std 1
    series[:, 2, 0] = 0.5 * (steps % 2)  # EN_mean: std 0.25
    series[:, 3, 0] = 2 + 0.5 * (steps % 2)  # EN_std: std 0.25
    runs = [FluctuationRun(4, 0.003, 10, 1.0, 1.0, 0.5, series)]
    table = fluctuation_table(runs, [Neuron(2, 3)], last_steps=200)
    assert "| 2-3 | BN_mean | 1.5 (2.5) |" in table
    assert "| 2-3 | EN_std | 0.25 (2.25) |" in table
    assert "| 2-3 | BN_mean / EN_mean | 6 |" in table
    assert "| 2-3 | BN_std / EN_std | 4 |" in table


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-1", "layer 5 is out of range; valid layers are 1-4"),
        ("0-1", "layer 0 is out of range; valid layers are 1-4"),
        ("1-129", "neuron 129 is out of range; layer 1 has neurons 1-128"),
        ("2-0", "neuron 0 is out of range; layer 2 has neurons 1-128"),
        ("1.1", "write layer-neuron, 1-based"),
        ("1-1,1-1", "name a neuron twice"),
    ],
)
def test_bad_neurons_name_the_valid_range(text, message):
    with pytest.raises(ValueError, match=message):
        parse_neurons(text, [128] * 4)


@pytest.mark.parametrize("text", ["4,1", "128,x", "4,4", ""])
def test_bad_batch_sizes_are_refused(text):
    with pytest.raises(ValueError, match="distinct comma-separated integers of at least 2"):
        parse_batch_sizes(text)


def test_command_writes_the_table_plots_and_series(mnist_like, tmp_path, restore_threads):
    out = tmp_path / "out"
    args = ["fluctuation", "--dataset", str(mnist_like), "--batch-sizes", "16,2", "--max-steps", "6"]
    result = CliRunner().invoke(app, [*args, "--neurons", "1-1,4-2", "--last-steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| 1-1 | BN_std |" in result.output and "capped at 6 steps" in result.output
    assert {p.name for p in out.iterdir()} == {"fluctuation.md", "fluctuation.png", "evolution.png", "statistics.npz"}
    assert "| 4-2 | BN_std / EN_std |" in (out / "fluctuation.md").read_text()
    with np.load(out / "statistics.npz") as archive:
        assert archive["series_bs16"].shape == archive["series_bs2"].shape == (6, len(STATISTICS), 2)
        assert list(archive["neurons"]) == ["1-1", "4-2"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--neurons", "1-1,5-2", "valid layers are 1-4"),
        ("--dataset", "missing.npz", "does not exist"),
        ("--norm", "xn", "Unknown norm"),
    ],
)
def test_command_fails_before_training_with_a_clear_error(
    mnist_like, tmp_path, restore_threads, option, value, message
):
    args = ["fluctuation", "--dataset", str(mnist_like), "--out", str(tmp_path / "out"), option, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()
