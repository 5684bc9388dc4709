"""Soak: 1,000 FedBN clients on MNIST (100 simulated nodes of 10 packed clients), 10 sampled per round,
100 rounds with injected faults, one SIGKILL of the whole run at a random round and a resume.

Checks: every round in metrics.jsonl exactly once; every failure recorded with its reason (the
sampled clients and their faults are recomputed from the seeds); the run's memory at round 100
within 10% of round 10. Memory is the summed PSS (proportional set size: shared pages split between
the processes that share them, so torch's libraries count once) of the run's process tree
(SuperLink, ServerApp, Ray's daemons and workers), sampled every 0.5 s; a round's figure is the
peak while it ran (from the previous round's line in metrics.jsonl to its own). Hangs need a round
timeout and slow every round they hit, so they run separately: 10 rounds, ``round-timeout = 20``.

Not part of ``make test``: run with ``make soak`` (``pytest -m soak -s``, which prints the figures).
"""

import json
import random
import threading
import time
from pathlib import Path

import pytest
import tomli_w

from fedhn.app.faults import draw_fault
from fedhn.launch.processes import children, live_members
from fedhn.launch.superlink import LocalSuperLink
from tests.conftest import crash

pytestmark = [pytest.mark.soak, pytest.mark.simulation]
PROJECT = Path(__file__).resolve().parent.parent
MNIST = PROJECT.parent / "shared" / "data" / "mnist.npz"
NODES, CLIENTS_PER_NODE, SAMPLED = 100, 10, 10
FEDERATION = {"num-supernodes": NODES}
# A hanging client holds its Ray actor for round-timeout + 1 s, and the messages queued behind it wait. With
# Flower's defaults (2 CPUs per client) 2 cores give one actor: one hang holds it into the next round, which
# then gets no update at all and ends the run (min-train-nodes = 1). Ray told of 8 CPUs, 1 per client, runs
# 8 actors, more than a round's hangs (2 expected of 10 sampled at rate 0.2), as a deployment's nodes would.
HANG_FEDERATION = FEDERATION | {"init-args-num-cpus": 8, "client-resources-num-cpus": 1}
CONFIG = {
    "dataset": str(MNIST),
    "model": "mlp",
    "norm": "bn",
    "stats-aggregation": "local",
    "clients-per-node": CLIENTS_PER_NODE,
    "fraction-train": SAMPLED / (NODES * CLIENTS_PER_NODE),
    "min-train-nodes": 1,
    "batch-sizes": "32",  # 60 examples a client: 2 local steps
    "eval-batch-size": 2000,
    "seed": 11,
}

needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"needs {MNIST} (../shared/data/mnist.npz)")


def _rounds(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _submit(superlink: LocalSuperLink, out_dir: Path, federation: dict, **config) -> int:
    path = out_dir.with_suffix(".toml")
    path.write_text(tomli_w.dumps(CONFIG | config | {"out-dir": str(out_dir)}))
    return superlink.submit(PROJECT, path, federation)


def _tree(superlink: LocalSuperLink) -> set[int]:
    """The SuperLink, its descendants and every member of the process groups it started."""
    pids, todo = set(), [superlink.process.pid]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo += children(pid)
    return pids | {pid for group in superlink.process_groups() for pid in live_members(group)}


def _pss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue  # gone, or not ours
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total / 1024


class MemoryByRound(threading.Thread):
    """Samples the run's memory every 0.5 s; ``peaks[r]`` is the peak seen while round r ran (after
    round r-1's line in metrics.jsonl, before round r's); every sample also goes to ``memory.jsonl``
    next to the run's directory."""

    def __init__(self, superlink: LocalSuperLink, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.superlink, self.out_dir = superlink, out_dir
        self.peaks: dict[int, float] = {}
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(0.5):
            rounds = _rounds(self.out_dir)
            running = rounds[-1]["round"] + 1 if rounds else 1
            pss = _pss_mib(_tree(self.superlink))
            self.peaks[running] = max(self.peaks.get(running, 0.0), pss)
            with open(self.out_dir.parent / "memory.jsonl", "a") as log:  # to read while it runs, or after
                log.write(json.dumps({"round": running, "pss_mib": round(pss, 1), "time": time.time()}) + "\n")


def _watched_run(
    tmp_path: Path, out_dir: Path, federation: dict = FEDERATION, kill_at: int | None = None, **config
) -> dict[int, float]:
    """Run (or resume) into ``out_dir`` on ``federation`` until it finishes, or until ``kill_at`` rounds
    are recorded and then SIGKILL the whole run (SuperLink, ServerApp, Ray). Returns the memory peaks by round."""
    superlink = LocalSuperLink(workdir=tmp_path)
    superlink.start()
    memory = MemoryByRound(superlink, out_dir)
    try:
        run_id = _submit(superlink, out_dir, federation, **config)
        memory.start()
        if kill_at is None:
            last = config["num-server-rounds"]
            status = superlink.wait(
                run_id, progress=lambda: bool(_rounds(out_dir)) and _rounds(out_dir)[-1]["round"] == last
            )
            assert status["status"] == "finished:completed", status
        else:
            _wait_rounds(superlink, run_id, out_dir, kill_at)
            crash(superlink)  # ServerApp, Ray and SuperLink die at once
    finally:
        memory.finished.set()
        superlink.stop()
    return memory.peaks


def _wait_rounds(superlink: LocalSuperLink, run_id: int, out_dir: Path, rounds: int) -> None:
    """Wait until ``rounds`` rounds are recorded; fail when the run ends or stalls first."""
    deadline, next_status = time.monotonic() + 3600, 0.0
    while len(_rounds(out_dir)) < rounds:
        assert time.monotonic() < deadline, f"{rounds} rounds did not finish in an hour"
        if time.monotonic() > next_status:  # flwr ls costs a CPU-second: every 30 s
            status = superlink.status(run_id)["status"]
            assert not status.startswith("finished"), f"the run ended ({status}) before round {rounds}"
            superlink.check_running(run_id, status)
            next_status = time.monotonic() + 30
        time.sleep(0.5)


def _sampled(seed: int, server_round: int) -> list[int]:
    """The clients the strategy samples in a round (seeded by (seed, round), from the client ids in order)."""
    clients = range(NODES * CLIENTS_PER_NODE)
    return sorted(random.Random(f"sampling-{seed}-{server_round}").sample(clients, SAMPLED))


def _faults(record: dict, rate: float, kinds: tuple[str, ...]) -> dict[int, str | None]:
    """The round's sampled clients and the fault each drew."""
    seed = CONFIG["seed"]
    return {c: draw_fault(seed, c, record["round"], rate, kinds) for c in _sampled(seed, record["round"])}


def _failed(record: dict) -> dict[int, str]:
    return {int(label.split()[1]): reason for label, reason in record["failures"].items()}


def _check_failures(record: dict, rate: float, kinds: tuple[str, ...]) -> None:
    """The round's failures are exactly the sampled clients whose fault was drawn, each with its reason."""
    reasons = {"raise": "injected fault", "nan": "non-finite"}
    expected = {c: fault for c, fault in _faults(record, rate, kinds).items() if fault}
    failed = _failed(record)
    assert sorted(failed) == sorted(expected), record
    assert all(reasons[expected[c]] in reason for c, reason in failed.items()), record
    assert (record["clients"], record["failed"]) == (SAMPLED - len(expected), len(expected))


def _check_hangs(record: dict, rate: float) -> None:
    """Every hanging client missed the round, recorded with the timeout as its reason; in Flower's Ray
    simulation clients dispatched after a hanging one may miss it too (README, Reliability), with the same reason."""
    hanging = {c for c, fault in _faults(record, rate, ("hang",)).items() if fault}
    failed = _failed(record)
    assert hanging <= set(failed), record
    assert all(reason == "no reply within the round timeout" for reason in failed.values()), record
    assert record["clients"] + record["failed"] == SAMPLED


@needs_mnist
def test_soak_1000_clients_100_rounds_faults_and_a_sigkill(tmp_path):
    rounds, rate, kinds = 100, 0.2, ("raise", "nan")
    faults = {"num-server-rounds": rounds, "fault-rate": rate, "fault-kinds": ",".join(kinds)}
    out_dir, kill_at = tmp_path / "soak", random.randint(20, 80)
    started = time.monotonic()
    before = _watched_run(tmp_path, out_dir, kill_at=kill_at, **faults)
    killed_after = len(_rounds(out_dir))
    after = _watched_run(tmp_path, out_dir, **faults, resume=True)
    duration = time.monotonic() - started
    records = _rounds(out_dir)
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    for record in records:
        _check_failures(record, rate, kinds)
    memory = before | after
    figures = {
        "duration_s": round(duration, 1),
        "killed_after_round": killed_after,
        "failures": sum(r["failed"] for r in records),
        "raised": sum(reason.count("injected fault") for r in records for reason in r["failures"].values()),
        "non_finite": sum(reason.count("non-finite") for r in records for reason in r["failures"].values()),
        "pss_mib_round_10": round(memory[10], 1),
        "pss_mib_round_100": round(memory[rounds], 1),
        "final_test_accuracy": records[-1]["test_accuracy"],
    }
    print(f"\nsoak: {json.dumps(figures)}")
    assert memory[rounds] <= 1.1 * memory[10], figures


@needs_mnist
def test_soak_hangs_are_dropped_after_the_round_timeout(tmp_path):
    rounds, rate = 10, 0.2
    out_dir = tmp_path / "hangs"
    started = time.monotonic()
    config = {"num-server-rounds": rounds, "fault-rate": rate, "fault-kinds": "hang", "round-timeout": 20.0}
    _watched_run(tmp_path, out_dir, HANG_FEDERATION, **config)
    records = _rounds(out_dir)
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    for record in records:
        _check_hangs(record, rate)
    figures = {"duration_s": round(time.monotonic() - started, 1), "failures": sum(r["failed"] for r in records)}
    print(f"\nsoak hangs: {json.dumps(figures)}")
