"""FedBN end to end: clients keep their own norm layers in versioned files under out-dir, so a run
killed with SIGKILL and resumed continues exactly as the uninterrupted run."""

import json
import time
from pathlib import Path

import pytest
import tomli_w

from fedhn.launch.superlink import LocalSuperLink
from tests.conftest import crash

pytestmark = pytest.mark.simulation
PROJECT = Path(__file__).resolve().parent.parent
FEDERATION = {"num-supernodes": 3}
CONFIG = {
    "num-server-rounds": 3,
    "fraction-train": 0.67,
    "batch-sizes": "4,8,16",
    "model": "mlp",
    "norm": "bn",
    "stats-aggregation": "local",
    "seed": 3,
}


def _rounds(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _without_time(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rounds]


def _submit(superlink: LocalSuperLink, tmp_path: Path, name: str, **extra) -> int:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(CONFIG | extra | {"out-dir": str(tmp_path / name)}))
    return superlink.submit(PROJECT, path, FEDERATION)


def test_a_killed_and_resumed_fedbn_run_equals_the_uninterrupted_one(tmp_path):
    with LocalSuperLink(workdir=tmp_path) as superlink:
        run_id = _submit(superlink, tmp_path, "whole")
        assert superlink.wait(run_id)["status"] == "finished:completed", superlink.log(run_id)[-4000:]
    whole = _rounds(tmp_path / "whole")
    assert [r["round"] for r in whole] == [1, 2, 3] and all(r["clients"] == 2 for r in whole)
    # every client that trained kept its norm layers on disk, at most two versions each
    folders = list((tmp_path / "whole" / "client-state" / "local-norms").iterdir())
    assert folders and all(1 <= len(list(folder.glob("round-*.pt"))) <= 2 for folder in folders)

    superlink = LocalSuperLink(workdir=tmp_path)
    superlink.start()
    try:
        _submit(superlink, tmp_path, "killed")
        deadline = time.monotonic() + 600
        while not _rounds(tmp_path / "killed"):
            assert time.monotonic() < deadline, "round 1 did not finish in 600 s"
            time.sleep(0.2)
        crash(superlink)  # ServerApp, Ray and SuperLink die at once
    finally:
        superlink.stop()
    assert 1 <= len(_rounds(tmp_path / "killed")) < 3
    with LocalSuperLink(workdir=tmp_path) as superlink:
        run_id = _submit(superlink, tmp_path, "killed", resume=True)
        assert superlink.wait(run_id)["status"] == "finished:completed", superlink.log(run_id)[-4000:]
    assert _without_time(_rounds(tmp_path / "killed")) == _without_time(whole)
