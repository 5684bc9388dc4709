"""End to end: the same clients packed onto few nodes give the run they give one per node."""

from pathlib import Path

import pytest
import tomli_w
import torch

from fedhn.app.config import RunConfig
from fedhn.app.layout import ClientLayout, client_layout
from fedhn.launch.superlink import LocalSuperLink
from tests.conftest import read_rounds

pytestmark = pytest.mark.simulation
PROJECT = Path(__file__).resolve().parent.parent


def _rounds(out_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall_time", "failures")} for r in read_rounds(out_dir)]


def test_ten_clients_on_two_nodes_give_the_run_of_ten_nodes(tmp_path, defaults):
    """Round 1 of 10 clients (8 sampled) as 10 nodes x 1 and as 2 nodes x 5, packed, in blocks and
    balanced: the same global model to float rounding, the same rounds and client counts."""
    config = {"num-server-rounds": 1, "fraction-train": 0.8, "batch-sizes": "2,4,8", "norm": "hn", "seed": 3}
    layouts = {"ten": (10, 1, "blocks"), "two": (2, 5, "blocks"), "balanced": (2, 5, "balanced")}
    balanced = RunConfig.from_mapping(defaults | config | {"clients-per-node": 5, "client-layout": "balanced"})
    assert client_layout(balanced, 2) != ClientLayout.blocks(2, 5)  # a layout of its own
    with LocalSuperLink(workdir=tmp_path) as superlink:
        for name, (nodes, per_node, layout) in layouts.items():
            path = tmp_path / f"{name}.toml"
            run = {"out-dir": str(tmp_path / name), "clients-per-node": per_node, "client-layout": layout}
            path.write_text(tomli_w.dumps(config | run))
            run_id = superlink.submit(PROJECT, path, {"num-supernodes": nodes, "client-resources-num-cpus": 1})
            assert superlink.wait(run_id)["status"] == "finished:completed"
    ten = _rounds(tmp_path / "ten")
    model_ten = torch.load(tmp_path / "ten" / "model.pt", weights_only=True)
    assert [(r["round"], r["clients"], r["failed"]) for r in ten] == [(1, 8, 0)]
    for name in ("two", "balanced"):
        packed = _rounds(tmp_path / name)
        assert [(r["round"], r["clients"], r["failed"]) for r in packed] == [(1, 8, 0)]
        assert packed[0]["train_loss"] == pytest.approx(ten[0]["train_loss"], rel=1e-4)
        assert packed[0]["test_accuracy"] == pytest.approx(ten[0]["test_accuracy"], abs=0.01)
        model = torch.load(tmp_path / name / "model.pt", weights_only=True)
        for key, value in model_ten.items():
            torch.testing.assert_close(model[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
