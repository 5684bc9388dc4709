"""Local training samples/s of K clients: packed (:mod:`fedhn.cohort`) vs one by one vs the ceiling.

    python -m benchmarks.packing [--quick] [--threads N] [--norms bn hn] [--clients 8 32 128] [--vmap]
    python -m benchmarks.packing --device cuda [--processes 4]

Every client holds the same number of random CIFAR-shaped (3x32x32) examples and trains resnet8 for one
epoch (linear lr scaling, momentum 0.9, weight decay 5e-4, no augmentation). Scenarios: every client at
batch 2; batch sizes 2, 3, 4 in turn; batch sizes 2, 4, ..., 128 in turn (capped at the partition size:
pass ``--examples 128`` for the whole range).
Candidates (all norms of one scenario and K), timed side by side in ABBA-ordered repeats
(:func:`benchmarks.throughput.paired`):

- ``one-by-one``: :func:`fedhn.training.train` for each client in turn;
- ``packed``: :func:`fedhn.cohort.pack` of the K models, :func:`fedhn.cohort.train_packed`, :func:`fedhn.cohort.unpack`;
- ``ceiling``: per batch size b held by m clients, one model trained at batch m*b on all their examples
  (the same work as one wide step, without grouping);
- with ``--vmap`` also ``vmap``: :class:`fedhn.cohort.FunctionalCohort` (``torch.func``), the fallback for
  models the cohort layout cannot map, trained and unpacked the same way;
- on CUDA also ``concurrent``: ``--processes`` P worker processes sharing the GPU, each training its K/P
  clients one by one (:mod:`benchmarks.concurrent`, what Ray does with ``num-gpus = 1/P`` per client).

On CUDA the ratios are of wall time (each call waits for the GPU: training reads its loss at the end).
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from collections.abc import Callable

import torch

from benchmarks.concurrent import ConcurrentProcesses
from benchmarks.throughput import paired
from benchmarks.timing import environment, markdown_table
from fedhn.cohort import Client, FunctionalCohort, pack, train_packed, unpack
from fedhn.models import build_model
from fedhn.training import client_lr, train

NORMS = ("bn", "gn_g4", "hn", "hn_g8")
CLIENTS = (8, 32, 128)
SCENARIOS: dict[str, tuple[int, ...]] = {"b2": (2,), "b2-4": (2, 3, 4), "b2..128": (2, 4, 8, 16, 32, 64, 128)}
SETTINGS = dict(momentum=0.9, weight_decay=5e-4)


def _client_batches(scenario: str, clients: int, examples: int) -> list[int]:
    return [min(b, examples) for b in itertools.islice(itertools.cycle(SCENARIOS[scenario]), clients)]


def _data(clients: int, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(clients, examples, 3, 32, 32, generator=generator)
    return images, torch.randint(0, 10, (clients, examples), generator=generator)


def candidates(
    norm: str, batches: list[int], examples: int, device: torch.device, vmap: bool = False
) -> dict[str, Callable[[], object]]:
    """One local epoch of every client, three ways (four with ``vmap``), on the same data (each way with its own
    models)."""
    images, labels = (t.to(device) for t in _data(len(batches), examples))
    models = []
    for seed in range(len(batches)):
        torch.manual_seed(seed)
        models.append(build_model("resnet8", 10, norm).to(device))

    def clients() -> list[Client]:
        return [
            Client(images[k], labels[k], b, client_lr(0.1, b, "linear"), torch.Generator().manual_seed(k))
            for k, b in enumerate(batches)
        ]

    def one_by_one() -> None:
        for client, model in zip(clients(), models, strict=True):
            train(model, client.images, client.labels, batch_size=client.batch_size, epochs=1, lr=client.lr,
                  generator=client.generator, **SETTINGS)  # fmt: skip

    def packed(packer: Callable = pack) -> None:
        cohort = packer(models)
        train_packed(cohort, clients(), epochs=1, **SETTINGS)
        unpack(cohort)

    counts = Counter(batches)
    wide = {b: build_model("resnet8", 10, norm).to(device) for b in counts}

    def ceiling() -> None:
        for b, count in counts.items():
            train(wide[b], images[:count].flatten(0, 1), labels[:count].flatten(), batch_size=b * count, epochs=1,
                  lr=client_lr(0.1, b, "linear"), generator=torch.Generator().manual_seed(0), **SETTINGS)  # fmt: skip

    found = {"one-by-one": one_by_one, "packed": packed, "ceiling": ceiling}
    return found | ({"vmap": lambda: packed(FunctionalCohort)} if vmap else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K 8 and 32, 16 examples per client, 3 repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument(
        "--norms", nargs="+", default=NORMS, help=f"norm specs, the first is the base (default {' '.join(NORMS)})"
    )
    parser.add_argument("--clients", type=int, nargs="+", help="K values (default 8 32 128; quick: 8 32)")
    parser.add_argument("--examples", type=int, help="examples per client, caps the batch sizes (default 32; quick 16)")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5; quick 3)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--processes", type=int, default=4, help="CUDA: concurrent worker processes (default 4)")
    parser.add_argument("--vmap", action="store_true", help="also time the vmap fallback (FunctionalCohort)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    examples = args.examples or (16 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 5)
    client_counts = args.clients or (CLIENTS[:2] if args.quick else CLIENTS)
    kinds = _kinds(device, args.vmap)
    print(environment())
    print(
        f"resnet8, 3x32x32, one epoch of {examples} examples per client on {device.type}. samples/s: median wall "
        f"time of {repeats} repeats; ratios (of samples/s): medians of {_ratio_kind(device)}-time ratios of calls "
        f"made side by side\n"
    )
    rows = []
    for scenario, clients in itertools.product(args.scenarios, client_counts):
        rows += _scenario_rows(args, scenario, clients, examples, repeats, device)
    print()
    print(markdown_table(_header(args.norms[0], kinds), rows))


def _scenario_rows(args, scenario: str, clients: int, examples: int, repeats: int, device: torch.device) -> list:
    """Time every candidate of every norm side by side for one scenario and K; one table row per norm."""
    batches = _client_batches(scenario, clients, examples)
    base, kinds = args.norms[0], _kinds(device, args.vmap)
    table, pools = {}, []
    for norm in args.norms:
        runs = candidates(norm, batches, examples, device, args.vmap)
        table |= {f"{norm} {kind}": run for kind, run in runs.items()}
        if "concurrent" in kinds:
            pools.append(
                ConcurrentProcesses(norm, *_data(clients, examples), batches, device, args.processes, SETTINGS)
            )
            table[f"{norm} concurrent"] = pools[-1]
    try:
        timing = paired({f"{base} packed": table.pop(f"{base} packed"), **table}, repeats)
    finally:
        for pool in pools:
            pool.close()
    column = 2 if device.type == "cpu" else 1  # CPU: this process's CPU time; CUDA: wall time
    rows = []
    for norm in args.norms:
        wall = {kind: clients * examples / timing[f"{norm} {kind}"][0] for kind in kinds}
        ratio = {kind: timing[f"{norm} {kind}"][column] for kind in kinds}  # time per call relative to the base
        speedups = [ratio[kind] / ratio["packed"] for kind in kinds if kind != "packed"]
        rows.append([scenario, clients, norm, *wall.values(), *speedups[:2], 1 / ratio["packed"], *speedups[2:]])
        print(markdown_table(_header(base, kinds), rows[-1:]).splitlines()[-1], flush=True)
    return rows


def _kinds(device: torch.device, vmap: bool = False) -> tuple[str, ...]:
    return KINDS + (("concurrent",) if device.type == "cuda" else ()) + (("vmap",) if vmap else ())


def _ratio_kind(device: torch.device) -> str:
    return "CPU" if device.type == "cpu" else "wall"


KINDS = ("one-by-one", "packed", "ceiling")


def _header(base: str, kinds: tuple[str, ...]) -> tuple[str, ...]:
    return (
        "scenario",
        "K",
        "norm",
        *kinds,
        "packed/one-by-one",
        "packed/ceiling",
        f"packed/{base}-packed",
        *(f"packed/{kind}" for kind in kinds[len(KINDS) :]),
    )


if __name__ == "__main__":
    main()
