"""Many simulated clients on one machine: wall time per round and peak memory of the whole process tree.

    python -m benchmarks.scale [--quick] [--nodes 10 1000] [--sampled 10] [--rounds 5] [--model resnet8]

For each node count N, one Flower simulation (``flwr run`` on a :class:`fedhn.launch.superlink.LocalSuperLink`,
``client-resources-num-cpus=1``: 2 Ray actors on this 2-core machine) of resnet8 on the embedded
digits (1,437 training examples, ``partitioner=iid``: 1-2 examples per client at N=1,000) samples
``--sampled`` clients per round (``fraction-train = sampled / N``, ``min-train-nodes = sampled``).

Reported per N: the time from ``flwr run`` to the ServerApp's first round clock (Flower registers the
N nodes and starts Ray), round 1 (it also asks every node for its partition id, once, for seeded
sampling), the median later round, the peak of the summed PSS (and RSS) of the SuperLink's whole process
tree (SuperLink, SuperExec, ServerApp and Ray driver, Ray daemons, ClientApp actors) sampled from
/proc every 0.5 s, and CPU seconds per later round of the simulation driver and of the actors. The
in-process column is ``fedhn.app.task.train_client`` for clients 0..sampled-1, one after the other at 1
thread: the compute a round needs at least.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.simulation import ACTOR, DRIVER, Sample, TreeSampler, load_average, plan, simulate
from benchmarks.timing import environment, markdown_table
from fedhn.app.config import RunConfig
from fedhn.app.results import METRICS_FILE
from fedhn.app.task import TrainingRound, new_model, train_client
from fedhn.launch.compare import Federation
from fedhn.launch.superlink import LocalSuperLink


def in_process(config: RunConfig, nodes: int, clients: int) -> float:
    """Seconds to train clients 0..clients-1 of ``nodes`` one after the other at 1 thread (after a warm-up)."""
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    state = new_model(config).state_dict()
    for client in range(clients):  # warm-up: data, model, kernels
        train_client(TrainingRound(config, nodes, 1, config.lr), state, client)
    start = time.perf_counter()
    for client in range(clients):
        train_client(TrainingRound(config, nodes, 2, config.lr), state, client)
    return time.perf_counter() - start


HEADER = [
    "nodes",
    "flwr run to ServerApp start (s)",
    "round 1 (s)",
    "later rounds, median (s)",
    "in-process compute of the sampled clients (s)",
    f"CPU-s per later round: {DRIVER}",
    "actors",
    "whole tree",
    "peak PSS (MiB)",
    "peak RSS sum (MiB)",
    "processes",
    f"{DRIVER} PSS at peak (MiB)",
    "load avg after",
]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per node count (about 1.5 minutes)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 1000], help="node counts (default 10 1000)")
    parser.add_argument("--sampled", type=int, default=10, help="clients sampled per round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5; round 1 is reported apart)")
    parser.add_argument("--norm", default="hn")
    parser.add_argument("--model", default="resnet8")
    args = parser.parse_args()
    args.dataset, args.epochs, args.batch_sizes = "digits", 1, ""
    if args.quick:
        args.rounds = 3
    return args


def measure(args: argparse.Namespace, link: LocalSuperLink, out_dir: Path, nodes: int) -> tuple[list[Any], Sample]:
    """One run with ``nodes`` nodes: a row of :data:`HEADER` and the sample of peak memory."""
    extra = {"fraction-train": args.sampled / nodes, "min-train-nodes": args.sampled, "partitioner": "iid"}
    config = plan(args, out_dir, nodes, **extra)
    compute = in_process(config, nodes, args.sampled)
    torch.set_num_threads(2)
    print(f"{nodes} nodes, {args.sampled} sampled per round (load average {load_average()})", flush=True)
    with TreeSampler(link, Path(config.out_dir) / METRICS_FILE) as sampler:
        submitted = time.monotonic()
        run = simulate(link, config, Federation(nodes, 1))
    first_seen = next(s.time for s in sampler.samples if s.rounds >= 1)
    startup = first_seen - submitted - run.round_times[0]  # until the ServerApp's clock started
    _, cpu = sampler.between_rounds(1, args.rounds)
    later = args.rounds - 1
    peak = sampler.peak()
    row = [
        nodes,
        f"{startup:.1f}",
        f"{run.round_times[0]:.1f}",
        f"{statistics.median(run.steady):.2f}",
        f"{compute:.3f}",
        f"{cpu.get(DRIVER, 0.0) / later:.2f}",
        f"{cpu.get(ACTOR, 0.0) / later:.2f}",
        f"{sum(cpu.values()) / later:.2f}",
        f"{peak.pss_mib:.0f}",
        f"{peak.rss_mib:.0f}",
        peak.processes,
        f"{peak.pss_by_kind.get(DRIVER, 0.0):.0f}",
        load_average(),
    ]
    return row, peak


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="fedhn-bench-scale-") as scratch, LocalSuperLink(workdir=scratch) as link:
        runs = [measure(args, link, Path(scratch) / f"nodes-{nodes}", nodes) for nodes in args.nodes]
    print(
        f"\n{args.sampled} clients sampled per round of {args.model}/{args.norm} on digits (iid), "
        f"client-resources-num-cpus=1, {args.rounds} rounds ({environment()})\n"
    )
    print(markdown_table(HEADER, [row for row, _ in runs]))
    print("\nPSS at the peak by process (MiB), summed over processes of the same kind:")
    for row, peak in runs:
        kinds = sorted(peak.pss_by_kind.items(), key=lambda item: -item[1])
        print(f"- {row[0]} nodes: " + ", ".join(f"{kind} {mib:.0f}" for kind, mib in kinds))
    summary = [f"{row[0]} nodes: {row[3]} s/round, peak PSS {peak.pss_mib / 1024:.2f} GiB" for row, peak in runs]
    print(f"\nsummary: {'; '.join(summary)}")


if __name__ == "__main__":
    main()
