"""Checkpoints, resume, and safe loading of state-dict files."""

import json

import pytest
import torch

from fedhn.app.checkpoint import (
    CHECKPOINT_FILE,
    check_restore,
    load_checkpoint,
    load_state_dict_file,
    restore,
    save_checkpoint,
)
from fedhn.app.config import RunConfig
from fedhn.app.results import METRICS_FILE
from fedhn.models import build_model


def _model():
    return build_model("resnet8", num_classes=10, norm="hn", in_channels=1, image_size=8)


def _config(defaults, tmp_path, **overrides) -> RunConfig:
    values = {"out-dir": str(tmp_path)} | {k.replace("_", "-"): v for k, v in overrides.items()}
    return RunConfig.from_mapping(defaults | values)


def _write_metrics(path, rounds):
    path.write_text("".join(json.dumps({"round": r, "test_accuracy": 0.5, "wall_time": r}) + "\n" for r in rounds))


def test_resume_restores_the_model_and_drops_rounds_the_checkpoint_does_not_cover(defaults, tmp_path):
    trained = _model()
    trained(torch.randn(4, 1, 8, 8))  # non-trivial running statistics
    save_checkpoint(tmp_path, 3, trained.state_dict(), _config(defaults, tmp_path).to_dict())
    _write_metrics(tmp_path / METRICS_FILE, [1, 2, 3, 4])  # round 4 finished, its checkpoint did not
    model = _model()
    assert restore(_config(defaults, tmp_path, resume=True, num_server_rounds=20), model) == 4
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert [json.loads(line)["round"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3]


def test_results_without_resume_are_never_overwritten(defaults, tmp_path):
    _write_metrics(tmp_path / METRICS_FILE, [1])
    with pytest.raises(ValueError, match="already holds a run; set resume = true"):
        check_restore(_config(defaults, tmp_path), _model())


def test_resume_with_another_config_is_refused(defaults, tmp_path):
    save_checkpoint(tmp_path, 1, _model().state_dict(), _config(defaults, tmp_path).to_dict())
    with pytest.raises(ValueError, match=r"another config \(lr: 0.1 -> 0.5\)"):
        load_checkpoint(tmp_path, _config(defaults, tmp_path, lr=0.5).to_dict(), _model())


def test_foreign_checkpoint_is_refused(defaults, tmp_path):
    torch.save(_model().state_dict(), tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="is not a fedhn checkpoint"):
        check_restore(_config(defaults, tmp_path, resume=True), _model())


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04garbage"])
def test_corrupted_files_give_a_clear_error(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(ValueError, match="cannot be loaded as a PyTorch state_dict"):
        load_state_dict_file(tmp_path / "model.pt")


def test_files_with_code_are_refused_by_weights_only_loading(tmp_path):
    torch.save({"layer": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module, not a state_dict
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(tmp_path / "module.pt")


def test_init_model_of_another_model_is_refused(defaults, tmp_path):
    torch.save(build_model("mlp", norm="bn").state_dict(), tmp_path / "other.pt")
    config = _config(defaults, tmp_path / "run", init_model=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="holds the state of another model: missing"):
        check_restore(config, _model())


def test_init_model_starts_the_run(defaults, tmp_path):
    source = _model()
    source(torch.randn(4, 1, 8, 8))
    torch.save(source.state_dict(), tmp_path / "init.pt")
    model = _model()
    assert restore(_config(defaults, tmp_path / "run", init_model=str(tmp_path / "init.pt")), model) == 1
    torch.testing.assert_close(model.state_dict()["stem.1.running_var"], source.state_dict()["stem.1.running_var"])


def test_missing_init_model_is_named(defaults, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*absent.pt does not exist"):
        check_restore(_config(defaults, tmp_path / "run", init_model=str(tmp_path / "absent.pt")), _model())


def test_a_checkpoint_from_before_a_key_existed_resumes_when_the_key_keeps_its_default(defaults, tmp_path):
    older = {k: v for k, v in _config(defaults, tmp_path).to_dict().items() if k != "clients-per-node"}
    save_checkpoint(tmp_path, 2, _model().state_dict(), older)
    assert restore(_config(defaults, tmp_path, resume=True), _model()) == 3
    with pytest.raises(ValueError, match=r"clients-per-node: 1 -> 5"):
        restore(_config(defaults, tmp_path, resume=True, clients_per_node=5), _model())
