"""A whole Flower simulation with packed clients: steady round time of C clients on 2 nodes
(``clients-per-node`` C/2) vs the same C clients one per node, side by side on one SuperLink.

    python -m benchmarks.packed_run [--quick] [--clients 100] [--nodes 2] [--rounds 4]
        [--norm hn] [--dataset ../shared/data/cifar10-small.npz] [--batch-sizes 2]

Both runs have the same clients, seeds and partitions (the same global models: see
tests/test_packed_nodes.py); only their layout on nodes differs. Round times come from the
``wall_time`` the ServerApp writes to ``metrics.jsonl`` (round 1, with Ray's start, is excluded).
``--scale`` instead runs one packed simulation of many tiny clients (e.g. 10,000 on mnist, 100
sampled per round) and reports its round time and the peak memory of the process tree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.simulation import TreeSampler, load_average, plan, simulate
from benchmarks.timing import environment, markdown_table
from fedhn.app.results import METRICS_FILE
from fedhn.launch.compare import Federation
from fedhn.launch.superlink import LocalSuperLink


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 clients, 3 rounds")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the packed layout (default 2)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (round 1 excluded)")
    parser.add_argument("--norm", default="hn")
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--dataset", default="../shared/data/cifar10-small.npz")
    parser.add_argument("--batch-sizes", default="2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fraction-train", type=float, default=1.0)
    parser.add_argument("--scale", action="store_true", help="only the packed layout: round time and peak memory")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds = 20, 3
    return args


def run(args: argparse.Namespace, link: LocalSuperLink, out_dir: Path, nodes: int) -> tuple[float, float, float]:
    """Steady round (s), round 1 (s) and peak PSS (GiB) of the clients on ``nodes`` nodes."""
    per_node = args.clients // nodes
    extra = {"clients-per-node": per_node, "fraction-train": args.fraction_train, "min-train-nodes": 1}
    extra |= {"partitioner": "iid", "lr-scaling": "linear"}
    config = plan(args, out_dir, nodes, **extra)
    print(f"{args.clients} clients on {nodes} nodes (load average {load_average()})", flush=True)
    with TreeSampler(link, Path(config.out_dir) / METRICS_FILE) as sampler:
        result = simulate(link, config, Federation(nodes, 1))
    return statistics.median(result.steady), result.round_times[0], sampler.peak().pss_mib / 1024


def main() -> None:
    args = arguments()
    layouts = [args.nodes] if args.scale else [args.nodes, args.clients]
    with tempfile.TemporaryDirectory(prefix="fedhn-bench-packed-") as scratch, LocalSuperLink(workdir=scratch) as link:
        results = {nodes: run(args, link, Path(scratch) / f"nodes-{nodes}", nodes) for nodes in layouts}
    print(
        f"\n{args.clients} clients of {args.model}/{args.norm} on {Path(args.dataset).name}, batch sizes "
        f"{args.batch_sizes}, {args.epochs} local epoch(s), fraction-train {args.fraction_train}, "
        f"client-resources-num-cpus=1 ({environment()})\n"
    )
    rows = [
        [f"{nodes} nodes x {args.clients // nodes}", f"{first:.1f}", f"{steady:.2f}", f"{peak:.2f}"]
        for nodes, (steady, first, peak) in results.items()
    ]
    print(markdown_table(["layout", "round 1 (s)", "steady round (s)", "peak PSS (GiB)"], rows))
    if not args.scale:
        ratio = results[args.clients][0] / results[args.nodes][0]
        print(
            f"\nsummary: packed ({args.nodes} nodes) is {ratio:.2f}x faster per steady round than one client per node"
        )


if __name__ == "__main__":
    main()
