"""A whole Flower simulation with packed clients: steady round time of C clients on 2 nodes
(``clients-per-node`` C/2) vs the same C clients one per node, side by side on one SuperLink.

    python -m benchmarks.packed_run [--quick] [--clients 100] [--nodes 2] [--rounds 4]
        [--norm hn] [--dataset ../shared/data/cifar10-small.npz] [--batch-sizes 2]
        [--partitioner iid] [--dirichlet-alpha 0.5] [--layouts] [--repeats 1]

Both runs have the same clients, seeds and partitions (the same global models: see
tests/test_packed_nodes.py); only their layout on nodes differs. Round times come from the
``wall_time`` the ServerApp writes to ``metrics.jsonl`` (round 1, with Ray's start, is excluded).
``--scale`` instead runs one packed simulation of many tiny clients (e.g. 10,000 on mnist, 100
sampled per round) and reports its round time and the peak memory of the process tree.
``--layouts`` instead compares the packed layout's ``client-layout = blocks`` with ``balanced`` (the same
clients on the same nodes, placed by their work: :mod:`fedhn.app.layout`), ``--repeats`` times in
turn, next to the ratio :func:`fedhn.app.layout.node_cost` predicts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.simulation import TreeSampler, load_average, plan, simulate
from benchmarks.timing import environment, markdown_table
from fedhn.app.config import RunConfig
from fedhn.app.layout import client_layout, client_work, node_cost
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
    parser.add_argument("--partitioner", default="iid", help="e.g. dirichlet (with --dirichlet-alpha)")
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5)
    parser.add_argument("--scale", action="store_true", help="only the packed layout: round time and peak memory")
    parser.add_argument("--layouts", action="store_true", help="client-layout blocks vs balanced on --nodes nodes")
    parser.add_argument("--repeats", type=int, default=1, help="--layouts: runs of each layout, in turn")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds = 20, 3
    return args


def configure(args: argparse.Namespace, out_dir: Path, nodes: int, layout: str = "blocks") -> RunConfig:
    """The run of the clients on ``nodes`` nodes in ``layout``."""
    extra = {"clients-per-node": args.clients // nodes, "fraction-train": args.fraction_train, "min-train-nodes": 1}
    extra |= {"partitioner": args.partitioner, "dirichlet-alpha": args.dirichlet_alpha, "lr-scaling": "linear"}
    return plan(args, out_dir, nodes, **extra, **{"client-layout": layout})


def run(args: argparse.Namespace, link: LocalSuperLink, config: RunConfig, nodes: int) -> tuple[float, float, float]:
    """Steady round (s), round 1 (s) and peak PSS (GiB) of ``config``'s clients on ``nodes`` nodes."""
    print(
        f"{args.clients} clients on {nodes} nodes, {config.client_layout} (load average {load_average()})", flush=True
    )
    with TreeSampler(link, Path(config.out_dir) / METRICS_FILE) as sampler:
        result = simulate(link, config, Federation(nodes, 1))
    return statistics.median(result.steady), result.round_times[0], sampler.peak().pss_mib / 1024


def predicted_cost(config: RunConfig, nodes: int) -> float:
    """The most costly node's :func:`node_cost` in ``config``'s layout."""
    work = client_work(config, nodes * config.clients_per_node)
    layout = client_layout(config, nodes)
    return max(node_cost([work[c] for c in clients], config.pack_clients) for clients in layout.hosted)


def compare_layouts(args: argparse.Namespace) -> None:
    """Steady rounds of ``blocks`` and ``balanced``, ``--repeats`` times in turn, and their ratio."""
    steady: dict[str, list[float]] = {"blocks": [], "balanced": []}
    configs: dict[str, RunConfig] = {}
    with tempfile.TemporaryDirectory(prefix="fedhn-bench-layout-") as scratch, LocalSuperLink(workdir=scratch) as link:
        for repeat in range(args.repeats):
            for name, times in steady.items():
                configs[name] = configure(args, Path(scratch) / f"{name}-{repeat}", args.nodes, name)
                times.append(run(args, link, configs[name], args.nodes)[0])
    print(f"\n{header(args)}, {args.partitioner} (alpha {args.dirichlet_alpha}), {args.repeats} repeat(s)\n")
    rows = [
        [name, str(client_layout(configs[name], args.nodes).hosted), f"{statistics.median(times):.2f}"]
        for name, times in steady.items()
    ]
    print(markdown_table(["client-layout", "clients of each node", "steady round (s), median"], rows))
    measured = statistics.median(steady["blocks"]) / statistics.median(steady["balanced"])
    predicted = predicted_cost(configs["blocks"], args.nodes) / predicted_cost(configs["balanced"], args.nodes)
    print(
        f"\nsummary: balanced is {measured:.2f}x faster per steady round than blocks "
        f"(node_cost predicts {predicted:.2f}x)"
    )


def header(args: argparse.Namespace) -> str:
    return (
        f"{args.clients} clients of {args.model}/{args.norm} on {Path(args.dataset).name}, batch sizes "
        f"{args.batch_sizes}, {args.epochs} local epoch(s), fraction-train {args.fraction_train}, "
        f"client-resources-num-cpus=1 ({environment()})"
    )


def main() -> None:
    args = arguments()
    if args.layouts:
        compare_layouts(args)
        return
    layouts = [args.nodes] if args.scale else [args.nodes, args.clients]
    with tempfile.TemporaryDirectory(prefix="fedhn-bench-packed-") as scratch, LocalSuperLink(workdir=scratch) as link:
        results = {
            nodes: run(args, link, configure(args, Path(scratch) / f"nodes-{nodes}", nodes), nodes) for nodes in layouts
        }
    print(f"\n{header(args)}\n")
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
