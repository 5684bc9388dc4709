"""End to end: real `flwr run` simulations on a SuperLink of our own, with Ray, stopped by PID."""

import json
import time
from pathlib import Path

import pytest
import torch

from fedhn.app.config import RunConfig
from fedhn.app.task import client_data
from fedhn.calibration import calibrate
from fedhn.launch.superlink import LocalSuperLink, live_members
from fedhn.models import build_model
from tests.conftest import compare, read_rounds

pytestmark = pytest.mark.simulation
PROJECT = Path(__file__).resolve().parent.parent


def test_compare_runs_one_simulation_per_norm_and_writes_the_report(tmp_path):
    run_config = "num-server-rounds=2 batch-sizes='2,8,32' lr-schedule='cosine' calibrate-stats=true"
    result = compare(tmp_path, "bn,hn", "--num-supernodes", "3", "--run-config", run_config)
    assert result.exit_code == 0, result.output
    for norm in ("bn", "hn"):
        lines = read_rounds(tmp_path / norm)
        assert [line["round"] for line in lines] == [1, 2]
        assert all(line["clients"] == 3 and line["failed"] == 0 and 0 <= line["test_accuracy"] <= 1 for line in lines)
        assert lines[-1]["test_accuracy"] > 0.5  # digits, 10 classes: learning happened
        calibration = lines[-1]["calibration"]
        assert "calibration" not in lines[0] and (calibration["clients"], calibration["layers"]) == (3, 9)
        assert 0 <= calibration["test_accuracy_before"] <= 1
        config = json.loads((tmp_path / norm / "config.json").read_text())
        assert config["run_config"]["norm"] == norm and config["versions"]["flwr"].startswith("1.42")
        model = build_model("resnet8", num_classes=10, norm=norm, in_channels=1, image_size=8)
        model.load_state_dict(torch.load(tmp_path / norm / "model.pt", weights_only=True))
        # the federated calibration is the population statistics of the union of the partitions: a fixed point
        union = torch.cat([client_data(RunConfig.from_mapping(config["run_config"]), p, 3).images for p in range(3)])
        calibrated = {key: value.clone() for key, value in model.state_dict().items()}
        calibrate(model, union)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, calibrated[key], rtol=1e-5, atol=1e-5, msg=key)
    summary = (tmp_path / "summary.md").read_text()
    assert "| bn |" in summary and "| hn |" in summary
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert "round 2/2" in result.output


FAILING_SERVER = """
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    raise RuntimeError("deliberate failure for the test")
"""


def test_a_failed_run_is_reported_as_failed_with_its_log(tmp_path):
    """fedhn's app with a ServerApp that raises once it runs: compare must report it, not pass over it."""
    app_dir = tmp_path / "app"
    (app_dir / "failing").mkdir(parents=True)
    (app_dir / "failing" / "server.py").write_text(FAILING_SERVER)
    pyproject = (PROJECT / "pyproject.toml").read_text()
    (app_dir / "pyproject.toml").write_text(pyproject.replace('"fedhn.server_app:app"', '"failing.server:app"'))
    result = compare(tmp_path / "out", "bn", "--num-supernodes", "2", app_dir=app_dir)
    assert result.exit_code == 1
    assert "bn FAILED: finished:failed" in result.output and "deliberate failure for the test" in result.output
    assert "FAILED" in (tmp_path / "out" / "summary.md").read_text()


def test_invalid_config_fails_before_any_flower_process_starts(tmp_path):
    result = compare(tmp_path, "gn_g32")
    assert result.exit_code == 2
    assert "does not fit model 'resnet8'" in result.output
    assert not (tmp_path / "gn_g32").exists()


def test_stopping_the_superlink_mid_run_ends_the_serverapp_and_ray(tmp_path):
    (tmp_path / "run.toml").write_text('num-server-rounds = 50\nout-dir = "' + str(tmp_path / "out") + '"\n')
    superlink = LocalSuperLink(workdir=tmp_path)
    superlink.start()
    try:
        run_id = superlink.submit(PROJECT, tmp_path / "run.toml", {"num-supernodes": 2})
        wait_s = 300  # ~35 s idle; a loaded 2-core CI machine took over 120 s
        deadline = time.monotonic() + wait_s
        while not (tmp_path / "out" / "metrics.jsonl").is_file():
            assert time.monotonic() < deadline, f"no round finished in {wait_s} s"
            time.sleep(0.5)
        groups = superlink.process_groups()
        assert groups and superlink.status(run_id)["status"] == "running"
    finally:
        superlink.stop()
    assert not any(live_members(group) for group in groups)
    assert not superlink.flwr_home.exists()
