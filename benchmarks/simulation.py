"""Flower simulation overhead: steady-state wall time per round / the same clients' compute in one process.

    python -m benchmarks.simulation [--quick] [--clients 10] [--rounds 6]
        [--repeats 3] [--norm hn] [--model resnet8] [--dataset digits] [--epochs 1] [--status-every 10]

Each repeat runs, in turn:

1. the clients' work in this process: every round, ``fedhn.app.task.train_client`` for every client
   (same partitions, batch sizes, epochs and seeds as the simulation), each client timed alone at
   1 thread as an actor runs it: ``max(sum/2, longest)`` is the round's lower bound on 2 parallel
   1-thread workers (the 2 threads the simulation's clients use in total: 2 Ray actors x 1 thread
   with ``client-resources-num-cpus=1`` on this 2-core machine; perfect scheduling, no overhead).
   In the first steady round, all clients also run one after the other with
   ``torch.set_num_threads(2)`` (the same 2 threads in one process). The server's work
   (aggregation, central evaluation) is timed apart.
2. the same run as a Flower simulation (``flwr run`` on a :class:`fedhn.launch.superlink.LocalSuperLink`,
   ``client-resources-num-cpus=1``): round times from the ``wall_time`` the ServerApp writes to
   ``metrics.jsonl`` after every round (aggregation, evaluation and checkpoint included), and the
   CPU seconds of the SuperLink's whole process tree (from /proc) over the same rounds.

Steady state excludes round 1 (Ray and actor start, data loading, model and kernel set-up) in both.
Ratios: median steady simulated round / median steady in-process round (2 threads), / the 2 x
1-thread bound, and CPU seconds of the simulation / CPU seconds of the clients at 1 thread (the
work Flower adds, insensitive to what else runs on the machine).

The 2-thread column depends on what else runs: with other jobs on the 2 cores, OpenMP's default
spin-waiting can make 2 torch threads at these tiny batches many times slower than 1
(``OMP_WAIT_POLICY=PASSIVE`` is steadier). The 2 x 1-thread bound and the CPU ratio do not depend on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import environment, markdown_table
from fedhn.app.config import RunConfig
from fedhn.app.results import METRICS_FILE, read_results
from fedhn.app.schedule import round_lr
from fedhn.app.task import TrainingRound, new_model, test_data, train_client
from fedhn.launch.compare import Federation, plan_runs, submit
from fedhn.launch.processes import children, live_members, stat_fields
from fedhn.launch.superlink import FlowerError, LocalSuperLink
from fedhn.training import evaluate
from strategies import aggregate_states

PROJECT = Path(__file__).resolve().parent.parent
GOAL = 1.25
DRIVER = "flwr-simulation"  # the process of the ServerApp, Flower's simulation runtime and the Ray driver
ACTOR = "ray::ClientAppActor"  # Ray's title for a ClientApp actor process
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the process tree of a SuperLink: memory and CPU, sampled from /proc ---------------------------


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kind(pid: int) -> str:
    """What the process is: its title (``ray::ClientAppActor``, ``raylet``, ``flwr-simulation``, ...)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [part.decode(errors="replace") for part in argv if part]
    if words and words[0].startswith("ray::"):
        return words[0].split()[0].split(".")[0]  # Ray's process title, e.g. ray::ClientAppActor
    words = [os.path.basename(word) for word in words if not word.startswith("-")]
    if words and words[0].startswith("python") and len(words) > 1:
        words = words[1:]  # the script, not the interpreter
    return words[0].split()[0] if words else "?"


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB; PSS splits shared pages among the processes that map them."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        try:  # no smaps_rollup: RSS only (PSS unknown, counted as RSS)
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KIB
            pss = rss
        except (OSError, ValueError, IndexError):
            pass
    return pss, rss


def _cpu_seconds(pid: int) -> float | None:
    fields = stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Sample:
    """The tree at one moment: time, total PSS and RSS (MiB), processes, CPU seconds so far by kind,
    rounds recorded in the watched ``metrics.jsonl`` so far."""

    time: float
    pss_mib: float
    rss_mib: float
    processes: int
    cpu: dict[str, float]
    rounds: int
    pss_by_kind: dict[str, float] = field(default_factory=dict)


@dataclass
class TreeSampler:
    """Samples a LocalSuperLink's whole process tree every ``interval`` s in a background thread: its
    descendants and the live members of the process groups it started (ServerApp, Ray daemons,
    ClientApp actors)."""

    superlink: LocalSuperLink
    metrics: Path | None = None  # a run's metrics.jsonl: each sample counts its lines (rounds done)
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (kind, last CPU seconds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # the tree as the run ended: later rounds' queries always find a sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def pids(self) -> set[int]:
        process = self.superlink.process
        if process is None:
            return set()
        found = {process.pid} | _descendants(process.pid)
        for group in self.superlink.process_groups():
            found |= set(live_members(group))
        return found

    def sample(self) -> Sample:
        pss = rss = 0
        pss_by_kind: dict[str, float] = defaultdict(float)
        pids = self.pids()
        for pid in pids:
            kind = _kind(pid)  # read every time: a Ray worker renames itself when it becomes an actor
            p, r = _memory_kib(pid)
            pss, rss = pss + p, rss + r
            pss_by_kind[kind] += p / 1024
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                self._cpu[pid] = (kind, seconds)
        cpu: dict[str, float] = defaultdict(float)
        for kind, seconds in self._cpu.values():  # processes that ended keep their last reading
            cpu[kind] += seconds
        rounds = self.metrics.read_text().count("\n") if self.metrics and self.metrics.is_file() else 0
        sample = Sample(time.monotonic(), pss / 1024, rss / 1024, len(pids), dict(cpu), rounds, dict(pss_by_kind))
        self.samples.append(sample)
        return sample

    def peak(self) -> Sample:
        """The sample with the largest total PSS."""
        return max(self.samples, key=lambda s: s.pss_mib)

    def between_rounds(self, first: int, last: int) -> tuple[float, dict[str, float]]:
        """Wall seconds and CPU seconds by kind of process from the end of round ``first`` to the end
        of round ``last`` (as first seen by the samples, so within ``interval``)."""
        start = next(s for s in self.samples if s.rounds >= first)
        end = next(s for s in self.samples if s.rounds >= last)
        return end.time - start.time, {kind: cpu - start.cpu.get(kind, 0.0) for kind, cpu in end.cpu.items()}


# --- a simulation run, timed -------------------------------------------------------------------------


@dataclass
class SimulationRun:
    """One simulated run: seconds per round (from the ``wall_time`` of ``metrics.jsonl``, the
    ServerApp's clock) and from submission to the run's end (this process's clock)."""

    round_times: list[float]
    total: float

    @property
    def steady(self) -> list[float]:
        return self.round_times[1:]


def simulate(
    superlink: LocalSuperLink,
    config: RunConfig,
    federation: Federation,
    echo: Callable[[str], None] = print,
    status_every: float = 10.0,
) -> SimulationRun:
    """Run ``config`` as a simulation on ``superlink`` and time it (``flwr ls`` only every
    ``status_every`` s: see :meth:`FlowerConnection.wait`)."""
    run_dir = Path(config.out_dir)
    metrics = run_dir / METRICS_FILE
    submitted = time.monotonic()
    seen = 0

    def progress() -> bool:
        nonlocal seen
        lines = metrics.read_text().count("\n") if metrics.is_file() else 0
        for done in range(seen + 1, lines + 1):
            echo(f"  round {done}/{config.num_server_rounds} seen at {time.monotonic() - submitted:.1f} s")
        seen = max(seen, lines)
        return seen >= config.num_server_rounds

    run_id = submit(superlink, PROJECT, config, federation.as_flower_config())
    status = superlink.wait(run_id, progress, status_every=status_every)["status"]
    total = time.monotonic() - submitted
    (run_dir / "flower.log").write_text(superlink.log(run_id))
    if status != "finished:completed":
        raise FlowerError(f"run {run_id} ended {status}; see {run_dir / 'flower.log'}")
    walls = [record["wall_time"] for record in read_results(run_dir).rounds]
    return SimulationRun([b - a for a, b in zip([0.0, *walls], walls, strict=False)], total)


# --- the same clients in this process ----------------------------------------------------------------


@dataclass
class InProcessRound:
    clients_2_threads: float | None  # all clients one after the other, torch.set_num_threads(2); None: not timed
    clients_1_thread: list[float]  # each client alone, 1 thread
    cpu_1_thread: float  # CPU seconds of all clients at 1 thread
    server: float  # aggregation + central evaluation

    @property
    def two_worker_bound(self) -> float:
        """Lower bound of the round on 2 parallel 1-thread workers (perfect scheduling, no overhead)."""
        return max(sum(self.clients_1_thread) / 2, max(self.clients_1_thread))


def in_process_rounds(config: RunConfig, clients: int, rounds: int, two_thread_rounds: int = 1) -> list[InProcessRound]:
    """Every round of the run done in this process, as the module docstring describes: each client
    at 1 thread every round, all clients at 2 threads in round 1 (warm-up) and the next
    ``two_thread_rounds`` rounds (on a busy machine 2 threads can take 30x longer than 1)."""
    torch.manual_seed(config.seed)
    model = new_model(config)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    images, labels = test_data(config)
    results = []
    for server_round in range(1, rounds + 1):
        training_round = TrainingRound(config, clients, server_round, round_lr(config, server_round))
        torch.set_num_threads(1)
        singles, states, weights, cpu = [], [], [], time.process_time()
        for client in range(clients):
            start = time.perf_counter()
            trained, result = train_client(training_round, state, client)
            states.append({key: value.numpy().copy() for key, value in trained.items()})  # as a reply copies
            singles.append(time.perf_counter() - start)
            weights.append(result.examples)
        cpu = time.process_time() - cpu
        torch.set_num_threads(2)
        clients_2 = None
        if server_round <= 1 + two_thread_rounds:
            start = time.perf_counter()
            for client in range(clients):
                trained, _ = train_client(training_round, state, client)
                _ = {key: value.numpy().copy() for key, value in trained.items()}
            clients_2 = time.perf_counter() - start
        start = time.perf_counter()
        aggregated = aggregate_states(states, weights, config.stats_aggregation)
        model.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in aggregated.items()})
        evaluate(model, images, labels, config.eval_batch_size)
        server = time.perf_counter() - start
        state = {key: value.clone() for key, value in model.state_dict().items()}
        results.append(InProcessRound(clients_2, singles, cpu, server))
    return results


# --- the benchmark -----------------------------------------------------------------------------------


def plan(args: argparse.Namespace, out_dir: Path, clients: int, **extra: Any) -> RunConfig:
    """The run config of the benchmark's arguments (validated by ``fedhn.launch.compare.plan_runs``)."""
    overrides: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "num-server-rounds": args.rounds,
        "local-epochs": args.epochs,
        "seed": 0,
    } | extra
    if args.batch_sizes:
        overrides["batch-sizes"] = args.batch_sizes
    return plan_runs(PROJECT, [args.norm], overrides, out_dir, Federation(clients, cpus_per_client=1))[args.norm]


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


HEADER = [
    "repeat",
    "sim round 1 (s)",
    "sim steady round (s)",
    "in-process, 2 threads (s)",
    "sim / in-process",
    "2 x 1-thread bound (s)",
    "sim / bound",
    "sim CPU-s per round: actors / driver / rest",
    "in-process CPU-s (1 thread)",
    "CPU ratio",
    "server work (s)",
    "peak PSS (MiB)",
    "load avg after",
]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 3 rounds (about 1 minute)")
    parser.add_argument("--clients", type=int, default=10, help="supernodes (default 10)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (default 6; round 1 is excluded)")
    parser.add_argument("--repeats", type=int, default=3, help="in-process + simulation pairs (default 3)")
    parser.add_argument("--norm", default="hn")
    parser.add_argument("--model", default="resnet8")
    parser.add_argument(
        "--dataset", default="digits", help="digits, or a .npz such as ../shared/data/cifar10-small.npz"
    )
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    parser.add_argument("--batch-sizes", default="", help="run-config batch-sizes (default: the app's 2..128 cycle)")
    parser.add_argument(
        "--status-every",
        type=float,
        default=10.0,
        help="seconds between `flwr ls` calls while a run goes (default 10; `fedhn compare` uses 5)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats = 3, 1
    return args


def measure(args: argparse.Namespace, link: LocalSuperLink, out_dir: Path, label: str) -> list[Any]:
    """One in-process + simulation pair: a row of :data:`HEADER` (ratios at indices 4, 6, 9)."""
    config = plan(args, out_dir, args.clients)
    print(f"[{label}] in process: {args.clients} clients x {args.rounds} rounds", flush=True)
    local = in_process_rounds(config, args.clients, args.rounds)[1:]
    print(f"[{label}] simulation (load average {load_average()})", flush=True)
    with TreeSampler(link, Path(config.out_dir) / METRICS_FILE) as sampler:
        run = simulate(link, config, Federation(args.clients, 1), status_every=args.status_every)
    _, cpu = sampler.between_rounds(1, args.rounds)
    cpu = {kind: seconds / (args.rounds - 1) for kind, seconds in cpu.items()}
    actors, driver, sim_cpu = cpu.get(ACTOR, 0.0), cpu.get(DRIVER, 0.0), sum(cpu.values())
    sim = statistics.median(run.steady)
    clients_2 = statistics.median(r.clients_2_threads for r in local if r.clients_2_threads is not None)
    bound = statistics.median(r.two_worker_bound for r in local)
    local_cpu = statistics.median(r.cpu_1_thread for r in local)
    return [
        label,
        f"{run.round_times[0]:.1f}",
        sim,
        clients_2,
        sim / clients_2,
        bound,
        sim / bound,
        f"{actors:.2f} / {driver:.2f} / {sim_cpu - actors - driver:.2f}",
        local_cpu,
        sim_cpu / local_cpu,
        statistics.median(r.server for r in local),
        f"{sampler.peak().pss_mib:.0f}",
        load_average(),
    ]


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="fedhn-bench-sim-") as scratch, LocalSuperLink(workdir=scratch) as link:
        rows = [
            measure(args, link, Path(scratch) / f"repeat-{repeat}", f"{repeat}/{args.repeats}")
            for repeat in range(1, args.repeats + 1)
        ]
    print(
        f"\nFlower simulation vs the same client work in one process: {args.model}/{args.norm} on "
        f"{Path(args.dataset).name}, {args.clients} clients, {args.rounds} rounds, {args.epochs} local epoch(s), "
        f"client-resources-num-cpus=1, `flwr ls` every {args.status_every:g} s, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} ({environment()})\n"
    )
    print(markdown_table(HEADER, rows))
    ratio, bound_ratio, cpu_ratio = (statistics.median(row[column] for row in rows) for column in (4, 6, 9))
    print(
        f"\nsummary: steady simulated round / in-process client compute (2 threads): {ratio:.2f} "
        f"({'meets' if ratio <= GOAL else 'misses'} the goal <= {GOAL}); / 2 x 1-thread bound: "
        f"{bound_ratio:.2f}; CPU seconds sim / in-process: {cpu_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
