"""The server's summaries of per-client numbers, against their formulas."""

import numpy as np
import pytest

from strategies.client_metrics import evaluation_summary, statistic_spread, worst_fraction_mean


def test_worst_ten_percent_is_the_mean_of_the_lowest_tenth_rounded_up():
    values = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, 1.0, 0.05]  # 11 clients: the 2 lowest
    assert worst_fraction_mean(values) == pytest.approx((0.05 + 0.1) / 2)
    assert worst_fraction_mean([0.4, 0.2, 0.9]) == pytest.approx(0.2)  # fewer than 10: the worst one
    with pytest.raises(ValueError):
        worst_fraction_mean([])


def test_evaluation_summary_weights_accuracy_and_loss_by_test_examples():
    accuracies, losses, examples = {3: 1.0, 1: 0.5, 7: 0.0}, {3: 0.1, 1: 1.0, 7: 2.0}, {3: 10, 1: 30, 7: 60}
    summary = evaluation_summary(accuracies, losses, examples)
    assert summary["accuracy"] == pytest.approx((10 * 1.0 + 30 * 0.5) / 100)
    assert summary["loss"] == pytest.approx((10 * 0.1 + 30 * 1.0 + 60 * 2.0) / 100)
    assert summary["mean_accuracy"] == pytest.approx(0.5)
    assert summary["worst_10pct_accuracy"] == 0.0
    assert (summary["clients"], summary["examples"]) == (3, 100)
    assert summary["accuracies"] == {"1": 0.5, "3": 1.0, "7": 0.0} and summary["losses"]["7"] == 2.0


def test_statistic_spread_is_the_mean_std_across_clients_of_each_running_buffer():
    rng = np.random.default_rng(0)
    states = [
        {"bn.running_mean": rng.normal(size=4), "bn.running_var": rng.uniform(1, 2, 4), "fc.weight": rng.normal(size=4)}
        for _ in range(5)
    ]
    spread = statistic_spread(states)
    assert set(spread) == {"bn.running_mean", "bn.running_var"}
    for key, value in spread.items():
        columns = [[s[key][i] for s in states] for i in range(4)]
        assert value == pytest.approx(np.mean([np.std(c) for c in columns]))
    assert statistic_spread([states[0], states[0]]) == {"bn.running_mean": 0.0, "bn.running_var": 0.0}
    assert statistic_spread(states[:1]) == {}
