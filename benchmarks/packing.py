"""Local training samples/s of K clients: packed (:mod:`fedhn.cohort`) vs one by one vs the ceiling.

    python -m benchmarks.packing [--quick] [--threads N] [--norms bn hn] [--clients 8 32 128]

Every client holds the same number of random CIFAR-shaped (3x32x32) examples and trains resnet8 for one
epoch (linear lr scaling, momentum 0.9, weight decay 5e-4, no augmentation). Scenarios: every client at
batch 2; batch sizes 2, 3, 4 in turn; batch sizes 2, 4, ..., 128 in turn (capped at the partition size).
Candidates, timed side by side in interleaved repeats (medians, :func:`benchmarks.timing.measure`):

- ``one-by-one``: :func:`fedhn.training.train` for each client in turn;
- ``packed``: :func:`fedhn.cohort.pack` of the K models, :func:`fedhn.cohort.train_packed`, :func:`fedhn.cohort.unpack`;
- ``ceiling``: per batch size b held by m clients, one model trained at batch m*b on all their examples
  (the same work as one wide step, without grouping).
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from collections.abc import Callable

import torch

from benchmarks.timing import environment, markdown_table, measure
from fedhn.cohort import Client, pack, train_packed, unpack
from fedhn.models import build_model
from fedhn.training import client_lr, train

NORMS = ("bn", "gn_g4", "hn", "hn_g8")
CLIENTS = (8, 32, 128)
SCENARIOS: dict[str, tuple[int, ...]] = {"b2": (2,), "b2-4": (2, 3, 4), "b2..128": (2, 4, 8, 16, 32, 64, 128)}
SETTINGS = dict(momentum=0.9, weight_decay=5e-4)


def _client_batches(scenario: str, clients: int, examples: int) -> list[int]:
    return [min(b, examples) for b in itertools.islice(itertools.cycle(SCENARIOS[scenario]), clients)]


def candidates(norm: str, batches: list[int], examples: int) -> dict[str, Callable[[], object]]:
    """One local epoch of every client, three ways, on the same data (each way with its own models)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(batches), examples, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (len(batches), examples), generator=generator)
    models = []
    for seed in range(len(batches)):
        torch.manual_seed(seed)
        models.append(build_model("resnet8", 10, norm))

    def clients() -> list[Client]:
        return [
            Client(images[k], labels[k], b, client_lr(0.1, b, "linear"), torch.Generator().manual_seed(k))
            for k, b in enumerate(batches)
        ]

    def one_by_one() -> None:
        for client, model in zip(clients(), models, strict=True):
            train(model, client.images, client.labels, batch_size=client.batch_size, epochs=1, lr=client.lr,
                  generator=client.generator, **SETTINGS)  # fmt: skip

    def packed() -> None:
        cohort = pack(models)
        train_packed(cohort, clients(), epochs=1, **SETTINGS)
        unpack(cohort)

    counts = Counter(batches)
    wide = {b: build_model("resnet8", 10, norm) for b in counts}

    def ceiling() -> None:
        for b, count in counts.items():
            train(wide[b], images[:count].flatten(0, 1), labels[:count].flatten(), batch_size=b * count, epochs=1,
                  lr=client_lr(0.1, b, "linear"), generator=torch.Generator().manual_seed(0), **SETTINGS)  # fmt: skip

    return {"one-by-one": one_by_one, "packed": packed, "ceiling": ceiling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K 8 and 32, 32 examples per client, 3 repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--norms", nargs="+", default=NORMS, help=f"norm specs (default {' '.join(NORMS)})")
    parser.add_argument("--clients", type=int, nargs="+", help="K values (default 8 32 128; quick: 8 32)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples, repeats, min_seconds = (32, 3, 0.5) if args.quick else (128, 7, 2.0)
    client_counts = args.clients or (CLIENTS[:2] if args.quick else CLIENTS)
    print(environment())
    print(f"resnet8, 3x32x32, one epoch of {examples} examples per client; samples/s (median of {repeats})\n")
    rows, packed_rate = [], {}
    for scenario, clients, norm in itertools.product(args.scenarios, client_counts, args.norms):
        batches = _client_batches(scenario, clients, examples)
        seconds = measure(candidates(norm, batches, examples), repeats, min_seconds)
        rate = {name: clients * examples / value for name, value in seconds.items()}
        packed_rate[scenario, clients, norm] = rate["packed"]
        bn = packed_rate.get((scenario, clients, "bn"))
        rows.append(
            [scenario, clients, norm, rate["one-by-one"], rate["packed"], rate["ceiling"],
             rate["packed"] / rate["one-by-one"], rate["packed"] / rate["ceiling"],
             "" if bn is None else rate["packed"] / bn]
        )  # fmt: skip
        print(markdown_table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown_table(HEADER, rows))


HEADER = (
    "scenario", "K", "norm", "one-by-one", "packed", "ceiling", "packed/one-by-one", "packed/ceiling", "packed/bn-packed"
)  # fmt: skip

if __name__ == "__main__":
    main()
