"""Central training (one client, no federation) at small and large batches: does BatchNorm lose at batch
2-4 on a model whose last stage has 4x4 maps, and by more than the seed spread? (issue #15 part 1)

    python -m experiments.central                  # the table from the committed runs (docs/results/central)
    python -m experiments.central --run            # first train the runs of the grid that are missing
    python -m experiments.central --run --norms bn,hn_g8 --batch-sizes 2,128 --seeds 0,1,2 --epochs 30

Every run trains ``--model`` on ``--data`` with SGD (momentum 0.9, weight decay 5e-4), the linear lr
scaling rule (``lr * b / 128``), a cosine decay over all steps and crop-flip augmentation, and records the
test accuracy after every epoch in ``docs/results/central/<run>.json`` (small: commit it). A finished run
is never repeated; an interrupted run starts over (runs take minutes). The table (also written to
``docs/results/central.md``) gives the final accuracy as mean ± sample std over seeds and, per norm and
batch size, the gap to the same norm at the largest batch, marked ``*`` when it exceeds twice the larger
of the two seed spreads.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from fedhn.data import crop_flip, load_dataset
from fedhn.models import build_model
from fedhn.seeding import torch_generator
from fedhn.training import client_lr, epoch_batches, evaluate, train

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "results" / "central"
TABLE = ROOT / "docs" / "results" / "central.md"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-small.npz"


def run_name(model: str, data: Path, norm: str, batch_size: int, seed: int, epochs: int, lr: float) -> str:
    """The file stem of one run's record."""
    return f"{model}-{data.stem}-{norm.replace(',', '_').replace('=', '-')}-b{batch_size}-e{epochs}-lr{lr:g}-s{seed}"


def train_run(model_name: str, data_path: Path, norm: str, batch_size: int, seed: int, epochs: int, lr: float) -> dict:
    """Train one run; its record: the settings, the test accuracy after each epoch, the seconds it took."""
    data = load_dataset(str(data_path))
    images, labels = data.normalized(data.x_train), data.y_train
    test_images, test_labels = data.normalized(data.x_test), data.y_test
    torch.manual_seed(seed)
    model = build_model(model_name, data.num_classes, norm, data.channels, data.image_size)
    generator = torch_generator("central", seed)
    mean, std = data.channel_stats
    black = -mean / std
    steps_per_epoch = len(epoch_batches(len(images), batch_size, torch.Generator()))  # the same every epoch
    total = steps_per_epoch * epochs
    accuracy: list[float] = []
    step = 0

    def after_step() -> None:
        nonlocal step
        step += 1
        if step % steps_per_epoch == 0:
            accuracy.append(evaluate(model, test_images, test_labels)[1])
            model.train()

    start = time.perf_counter()
    train(
        model,
        images,
        labels,
        batch_size=batch_size,
        epochs=epochs,
        lr=client_lr(lr, batch_size, "linear"),
        momentum=0.9,
        weight_decay=5e-4,
        generator=generator,
        augment=lambda batch: crop_flip(batch, black, generator),
        after_step=after_step,
        lr_factor=lambda t: 0.5 * (1 + math.cos(math.pi * t / total)),
    )
    return {
        "model": model_name,
        "data": data_path.name,
        "norm": norm,
        "batch_size": batch_size,
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "test_accuracy": accuracy,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(records: list[dict]) -> str:
    """The markdown table of final accuracies (%), one row per (model, data, epochs, norm), one column per batch."""
    groups: dict[tuple, dict[int, list[float]]] = {}
    for r in records:
        key = (r["model"], r["data"], r["epochs"], r["norm"])
        groups.setdefault(key, {}).setdefault(r["batch_size"], []).append(100 * r["test_accuracy"][-1])
    batches = sorted({r["batch_size"] for r in records})
    lines = [
        "| model | data | epochs | norm | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---" * (4 + len(batches)) + "|",
    ]
    for (model, data, epochs, norm), by_batch in sorted(groups.items()):
        largest = by_batch[max(by_batch)]
        cells = [_cell(by_batch[b], largest) if b in by_batch else "" for b in batches]
        lines.append(f"| {model} | {data} | {epochs} | {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float], reference: list[float]) -> str:
    mean, spread = statistics.fmean(values), _std(values)
    text = f"{mean:.1f} ± {spread:.1f} (n={len(values)})" if len(values) > 1 else f"{mean:.1f} (n=1)"
    if values is reference:
        return text
    gap = mean - statistics.fmean(reference)
    clear = len(values) > 1 and len(reference) > 1 and abs(gap) > 2 * max(spread, _std(reference))
    return f"{text}, {gap:+.1f}{'*' if clear else ''}"


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="train the runs of the grid that are missing first")
    parser.add_argument("--model", default="resnet10")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a .npz (default: cifar10-small)")
    parser.add_argument("--norms", default="bn,hn_g8", help="comma-separated norm specs")
    parser.add_argument("--batch-sizes", default="2,128", help="comma-separated batch sizes")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate at batch 128 (linear scaling)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (two 1-thread processes on disjoint grids train more runs per hour)",
    )
    args = parser.parse_args()
    if args.run:
        if not args.data.exists():
            parser.error(f"--data {args.data} does not exist; pass a .npz (x_train, y_train, x_test, y_test)")
        RUNS.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        for seed in map(int, args.seeds.split(",")):
            for batch_size in map(int, args.batch_sizes.split(",")):
                for norm in args.norms.split(","):
                    path = (
                        RUNS / f"{run_name(args.model, args.data, norm, batch_size, seed, args.epochs, args.lr)}.json"
                    )
                    if path.exists():
                        continue
                    record = train_run(args.model, args.data, norm, batch_size, seed, args.epochs, args.lr)
                    path.write_text(json.dumps(record, indent=1) + "\n")
                    print(f"{path.name}: {100 * record['test_accuracy'][-1]:.1f} % in {record['seconds']:.0f} s")
    records = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    if not records:
        print(f"no runs in {RUNS}; train some with --run")
        return
    text = table(records)
    TABLE.write_text(
        "# Central training at small and large batches\n\nWritten by `python -m experiments.central` from "
        "docs/results/central/*.json: final test accuracy (%), mean ± std over seeds; after the comma the gap "
        "to the same norm at the largest batch (`*`: larger than twice the seed spread).\n\n" + text + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
