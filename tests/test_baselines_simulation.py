"""End to end: FixBN's round switch and FedWon's norm-free clients in real `flwr run` simulations."""

from pathlib import Path

import pytest
import tomli_w
import torch

from fedhn.launch.superlink import LocalSuperLink
from fedhn.models import build_model
from tests.conftest import read_rounds

pytestmark = pytest.mark.simulation
PROJECT = Path(__file__).resolve().parent.parent
FEDERATION = {"num-supernodes": 3, "client-resources-num-cpus": 1}


def _run(superlink: LocalSuperLink, tmp_path: Path, name: str, config: dict, federation: dict = FEDERATION) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(config | {"out-dir": str(tmp_path / name)}))
    run_id = superlink.submit(PROJECT, path, federation)
    assert superlink.wait(run_id)["status"] == "finished:completed", superlink.log(run_id)[-3000:]
    return tmp_path / name


def test_fixbn_calibrates_at_round_t_then_keeps_the_statistics_while_the_weights_train(tmp_path):
    """hn (FixHN) with freeze-stats-after = 1 and calibrate-stats: a 2-round run ends with exactly the running
    statistics the same run has after round 1 (calibrated there, frozen in round 2), and other weights."""
    config = {"norm": "hn", "batch-sizes": "2,8,32", "calibrate-stats": True, "freeze-stats-after": 1, "seed": 1}
    with LocalSuperLink(workdir=tmp_path) as superlink:
        one = _run(superlink, tmp_path, "one", config | {"num-server-rounds": 1})
        two = _run(superlink, tmp_path, "two", config | {"num-server-rounds": 2})
    first, second = read_rounds(one), read_rounds(two)
    assert [(r["round"], r["clients"], r["failed"]) for r in second] == [(1, 3, 0), (2, 3, 0)]
    assert second[0]["calibration"]["layers"] == 9 and "calibration" not in second[1]  # once, after round T
    assert second[0]["test_accuracy"] == first[0]["test_accuracy"]  # the same round 1
    after_one = torch.load(one / "model.pt", weights_only=True)
    after_two = torch.load(two / "model.pt", weights_only=True)
    statistics = [key for key in after_one if "running" in key or "num_batches" in key]
    assert len(statistics) == 9 * 3
    for key in statistics:  # pooled aggregation of identical statistics returns them, to float rounding
        torch.testing.assert_close(after_two[key], after_one[key], rtol=1e-5, atol=1e-6, msg=key)
    weights = [key for key in after_one if key.endswith("conv1.weight")]
    assert all(not torch.allclose(after_two[key], after_one[key]) for key in weights)  # round 2 trained


def test_fedwon_trains_norm_free_packed_clients_at_batch_size_one(tmp_path):
    """norm = none, conv = ws, agc-clip: 4 clients at batch sizes 1 and 2, packed two per node, learn digits."""
    config = {
        "norm": "none", "conv": "ws", "agc-clip": 0.04, "batch-sizes": "1,2", "lr-scaling": "none", "lr": 0.02,
        "num-server-rounds": 2, "clients-per-node": 2, "min-train-nodes": 4,
    }  # fmt: skip
    with LocalSuperLink(workdir=tmp_path) as superlink:
        out = _run(superlink, tmp_path, "fedwon", config, {"num-supernodes": 2, "client-resources-num-cpus": 1})
    rounds = read_rounds(out)
    assert [(r["round"], r["clients"], r["failed"]) for r in rounds] == [(1, 4, 0), (2, 4, 0)]
    assert rounds[-1]["test_accuracy"] > 0.3  # digits, 10 classes: a norm-free network learned at batch 1-2
    state = torch.load(out / "model.pt", weights_only=True)
    model = build_model("resnet8", 10, "none", 1, image_size=8, conv="ws")
    model.load_state_dict(state)
    gains = [key for key in state if key.endswith("residual_gain.gain")]
    assert len(gains) == 3 and any(state[key] != 0 for key in gains)  # SkipInit gains trained
    assert not any("running" in key for key in state)
