"""fedhn report with per-client evaluation and feature shift: central and per-client accuracy side by side."""

from PIL import Image

from fedhn.app.results import RunRecorder, read_results
from fedhn.launch.report import write_report


def _run(directory, norm, client_accuracy, shift=None):
    recorder = RunRecorder(directory, {"norm": norm, "num-server-rounds": 2, "model": "mlp", "dataset": "tiny"})
    for server_round in (1, 2):
        line = {"round": server_round, "test_accuracy": 0.4 + 0.1 * server_round, "wall_time": 1.0 * server_round}
        if client_accuracy is not None:
            evaluation = {"clients": 4, "accuracy": client_accuracy * server_round / 2, "mean_accuracy": 0.5}
            line["client_evaluation"] = evaluation | {"worst_10pct_accuracy": 0.125, "accuracies": {}}
        if shift:
            line["shift_accuracy"] = shift
        recorder.log_round(line)
    return read_results(directory)


def test_summary_shows_central_and_client_accuracy_and_each_transformation(tmp_path):
    runs = [
        _run(tmp_path / "bn", "bn", 0.75, {"invert": 0.25, "blur": 0.5}),
        _run(tmp_path / "hn", "hn", None, {"invert": 0.375}),
    ]
    table = write_report(runs, tmp_path / "report")
    assert "| bn | 2 | 0.6000 | 0.7500 | 0.5000 | 0.1250 | 4 |" in table
    assert "| hn | 2 |" not in table  # no client evaluation: not in that table
    assert "| norm | untransformed | invert | blur |" in table
    assert "| bn | 0.6000 | 0.2500 | 0.5000 |" in table and "| hn | 0.6000 | 0.3750 | - |" in table
    assert (tmp_path / "report" / "summary.md").read_text().endswith(table)
    with Image.open(tmp_path / "report" / "accuracy.png") as image:
        assert image.width > 1.5 * image.height  # two panels side by side


def test_runs_without_client_evaluation_keep_the_single_plot_and_table(tmp_path):
    table = write_report([_run(tmp_path / "bn", "bn", None)], tmp_path / "report")
    assert "Per-client" not in table and "transformation" not in table
    with Image.open(tmp_path / "report" / "accuracy.png") as image:
        assert image.width < 1.7 * image.height
