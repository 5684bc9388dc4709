"""experiments.central: one central run's record and the table's gap marks."""

import pytest
import torch

from experiments.central import CentralRun, table, train_run
from fedhn.models.norm_free import WSConv2d


def test_a_central_run_records_the_test_accuracy_after_every_epoch(tiny_npz):
    record = train_run(CentralRun("mlp", tiny_npz, "bn", batch_size=8, seed=0, epochs=3, lr=0.5))
    assert (record["norm"], record["batch_size"], record["epochs"]) == ("bn", 8, 3)
    assert len(record["test_accuracy"]) == 3
    assert all(0.0 <= a <= 1.0 for a in record["test_accuracy"])
    assert record["test_accuracy"][-1] > 0.5  # 4 separable classes: better than chance (0.25)


def test_a_fedwon_run_trains_with_ws_convs_and_adaptive_clipping_and_is_named_by_them(tiny_npz, monkeypatch):
    calls = []
    monkeypatch.setattr("experiments.central.train", lambda model, *a, **kw: calls.append((model, kw)))
    run = CentralRun("resnet8", tiny_npz, "none", batch_size=4, seed=0, epochs=1, lr=1.6, conv="ws", agc_clip=0.16)
    record = train_run(run)
    [(model, settings)] = calls
    assert (settings["agc_clip"], settings["lr"]) == (0.16, 1.6 * 4 / 128)
    assert all(type(m) is WSConv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert (record["norm"], record["conv"], record["agc_clip"], record["lr"]) == ("none", "ws", 0.16, 1.6)
    assert run.name == f"resnet8-{tiny_npz.stem}-none+ws+agc0.16-b4-e1-lr1.6-s0"
    plain = CentralRun("resnet10", tiny_npz, "bn", 2, 1, 30, 0.1)  # the committed runs' names, unchanged
    assert plain.name == f"resnet10-{tiny_npz.stem}-bn-b2-e30-lr0.1-s1"


def test_a_run_with_square_root_scaling_trains_at_that_rate_and_is_named_by_it(tiny_npz, monkeypatch):
    calls = []
    monkeypatch.setattr("experiments.central.train", lambda model, *a, **kw: calls.append(kw["lr"]))
    run = CentralRun("mlp", tiny_npz, "bn", batch_size=8, seed=0, epochs=1, lr=0.4, lr_scaling="sqrt")
    assert train_run(run)["lr_scaling"] == "sqrt"
    assert calls == [pytest.approx(0.1)]  # 0.4 * sqrt(8 / 128)
    assert run.name == f"mlp-{tiny_npz.stem}-bn-b8-e1-lr0.4sqrt-s0"


def test_the_table_marks_gaps_larger_than_twice_the_seed_spread():
    def run(norm, batch, seed, accuracy):
        return dict(
            model="m", data="d", epochs=1, norm=norm, lr=0.1, batch_size=batch, seed=seed, test_accuracy=[accuracy]
        )

    records = [run("bn", 128, s, a) for s, a in enumerate((0.60, 0.61, 0.62))]
    records += [run("bn", 2, s, a) for s, a in enumerate((0.50, 0.51, 0.52))]  # -10 points, spread 1: clear
    records += [run("hn", 128, s, a) for s, a in enumerate((0.60, 0.61, 0.62))]
    records += [run("hn", 2, s, a) for s, a in enumerate((0.55, 0.61, 0.64))]  # -0.9 points, spread 4.6: not
    lines = table(records).splitlines()
    assert lines[2] == "| m | d | 1 | bn | 0.1 | 51.0 ± 1.0 (n=3), -10.0* | 61.0 ± 1.0 (n=3) |"
    assert lines[3] == "| m | d | 1 | hn | 0.1 | 60.0 ± 4.6 (n=3), -1.0 | 61.0 ± 1.0 (n=3) |"


def test_the_table_has_a_row_per_method_and_learning_rate_of_a_sweep():
    def run(lr, accuracy, **method):
        record = dict(model="m", data="d", epochs=3, norm="none", lr=lr, batch_size=4, seed=0, test_accuracy=[accuracy])
        return record | method

    records = [run(0.1, 0.28, conv="ws", agc_clip=0.16), run(1.6, 0.41, conv="ws", agc_clip=0.16), run(0.1, 0.2)]
    records.append(run(0.4, 0.45, conv="ws", agc_clip=0.16, lr_scaling="sqrt"))
    lines = table(records).splitlines()
    assert lines[0] == "| model | data | epochs | norm | lr | batch 4 |"
    assert lines[2:] == [
        "| m | d | 3 | none | 0.1 | 20.0 (n=1) |",
        "| m | d | 3 | none+ws+agc0.16 | 0.1 | 28.0 (n=1) |",
        "| m | d | 3 | none+ws+agc0.16 | 0.4 sqrt | 45.0 (n=1) |",
        "| m | d | 3 | none+ws+agc0.16 | 1.6 | 41.0 (n=1) |",
    ]
