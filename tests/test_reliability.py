"""Reliability end to end: resume after SIGKILL, identical results for identical seeds, client faults."""

import json
import time
from pathlib import Path

import pytest
import tomli_w

from fedhn.app.faults import draw_fault
from fedhn.launch.superlink import LocalSuperLink
from tests.conftest import crash

pytestmark = pytest.mark.simulation
PROJECT = Path(__file__).resolve().parent.parent


def _rounds(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _without_time(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rounds]


def _run(superlink: LocalSuperLink, tmp_path: Path, name: str, federation: dict, **config) -> int:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(config | {"out-dir": str(tmp_path / name)}))
    return superlink.submit(PROJECT, path, federation)


def test_resumed_and_repeated_runs_give_identical_metrics(tmp_path):
    """Two runs with the same seed agree exactly; a run killed with SIGKILL mid-round and resumed records
    every round exactly once and ends where the uninterrupted run ends."""
    federation = {"num-supernodes": 3}
    config = {"num-server-rounds": 4, "fraction-train": 0.67, "batch-sizes": "4,8,16", "norm": "hn_g4", "seed": 7}
    with LocalSuperLink(workdir=tmp_path) as superlink:
        for name in ("first", "second"):
            assert (
                superlink.wait(_run(superlink, tmp_path, name, federation, **config))["status"] == "finished:completed"
            )
    first = _rounds(tmp_path / "first")
    assert [r["round"] for r in first] == [1, 2, 3, 4] and all(r["clients"] == 2 for r in first)
    assert _without_time(_rounds(tmp_path / "second")) == _without_time(first)

    superlink = LocalSuperLink(workdir=tmp_path)
    superlink.start()
    try:
        _run(superlink, tmp_path, "killed", federation, **config)
        deadline = time.monotonic() + 180
        while len(_rounds(tmp_path / "killed")) < 2:
            assert time.monotonic() < deadline, "two rounds did not finish in 180 s"
            time.sleep(0.2)
        crash(superlink)  # ServerApp, Ray and SuperLink die at once
    finally:
        superlink.stop()
    assert 2 <= len(_rounds(tmp_path / "killed")) < 4
    with LocalSuperLink(workdir=tmp_path) as superlink:
        run_id = _run(superlink, tmp_path, "killed", federation, **config, resume=True)
        assert superlink.wait(run_id)["status"] == "finished:completed"
    assert _without_time(_rounds(tmp_path / "killed")) == _without_time(first)


def _seed_with(partitions: int, rounds: int, rate: float, kinds: tuple[str, ...], accept) -> int:
    """The first seed whose fault draws (a list per round of each partition's fault) ``accept`` approves."""
    for seed in range(1000):
        draws = [[draw_fault(seed, p, r, rate, kinds) for p in range(partitions)] for r in range(1, rounds + 1)]
        if accept(draws):
            return seed
    raise AssertionError("no seed found")


def test_clients_that_raise_or_reply_nan_are_dropped_and_recorded(tmp_path):
    kinds, partitions, rounds, rate = ("raise", "nan"), 4, 3, 0.4
    seed = _seed_with(
        partitions, rounds, rate, kinds, lambda d: all(None in r for r in d) and {f for r in d for f in r} >= set(kinds)
    )
    config = {"num-server-rounds": rounds, "fault-rate": rate, "fault-kinds": ",".join(kinds), "min-train-nodes": 1}
    with LocalSuperLink(workdir=tmp_path) as superlink:
        run_id = _run(superlink, tmp_path, "faults", {"num-supernodes": partitions}, **config, seed=seed)
        assert superlink.wait(run_id)["status"] == "finished:completed"
    records = _rounds(tmp_path / "faults")
    assert [r["round"] for r in records] == [1, 2, 3]
    for record in records:
        faults = [draw_fault(seed, p, record["round"], rate, kinds) for p in range(partitions)]
        assert (record["clients"], record["failed"]) == (faults.count(None), partitions - faults.count(None))
        reasons = " ".join(record["failures"].values())
        assert reasons.count("injected fault") == faults.count("raise")
        assert reasons.count("non-finite") == faults.count("nan")
