"""experiments.central: one central run's record and the table's gap marks."""

from experiments.central import table, train_run


def test_a_central_run_records_the_test_accuracy_after_every_epoch(tiny_npz):
    record = train_run("mlp", tiny_npz, "bn", batch_size=8, seed=0, epochs=3, lr=0.5)
    assert (record["norm"], record["batch_size"], record["epochs"]) == ("bn", 8, 3)
    assert len(record["test_accuracy"]) == 3
    assert all(0.0 <= a <= 1.0 for a in record["test_accuracy"])
    assert record["test_accuracy"][-1] > 0.5  # 4 separable classes: better than chance (0.25)


def test_the_table_marks_gaps_larger_than_twice_the_seed_spread():
    def run(norm, batch, seed, accuracy):
        return dict(model="m", data="d", epochs=1, norm=norm, batch_size=batch, seed=seed, test_accuracy=[accuracy])

    records = [run("bn", 128, s, a) for s, a in enumerate((0.60, 0.61, 0.62))]
    records += [run("bn", 2, s, a) for s, a in enumerate((0.50, 0.51, 0.52))]  # -10 points, spread 1: clear
    records += [run("hn", 128, s, a) for s, a in enumerate((0.60, 0.61, 0.62))]
    records += [run("hn", 2, s, a) for s, a in enumerate((0.55, 0.61, 0.64))]  # -0.9 points, spread 4.6: not
    lines = table(records).splitlines()
    assert lines[2] == "| m | d | 1 | bn | 51.0 ± 1.0 (n=3), -10.0* | 61.0 ± 1.0 (n=3) |"
    assert lines[3] == "| m | d | 1 | hn | 60.0 ± 4.6 (n=3), -1.0 | 61.0 ± 1.0 (n=3) |"
