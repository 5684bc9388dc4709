"""Seeded fault injection."""

import torch

from fedhn.app.faults import draw_fault, poison


def test_faults_are_seeded_per_client_and_round():
    draws = [draw_fault(0, p, r, 0.3, ("raise", "nan", "hang")) for p in range(20) for r in range(1, 11)]
    assert draws == [draw_fault(0, p, r, 0.3, ("raise", "nan", "hang")) for p in range(20) for r in range(1, 11)]
    assert 0.2 < sum(d is not None for d in draws) / len(draws) < 0.4
    assert {d for d in draws if d} == {"raise", "nan", "hang"}


def test_no_faults_at_rate_zero_and_always_at_one():
    assert all(draw_fault(1, p, 1, 0.0, ("raise",)) is None for p in range(50))
    assert all(draw_fault(1, p, 1, 1.0, ("nan",)) == "nan" for p in range(50))


def test_poison_sets_floats_to_nan_and_keeps_counters():
    state = poison({"w": torch.ones(3), "num_batches_tracked": torch.tensor(5)})
    assert torch.isnan(state["w"]).all() and state["num_batches_tracked"] == 5
