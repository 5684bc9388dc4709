"""Central training (one client, no federation) at small and large batches: does BatchNorm lose at batch
2-4 on a model whose last stage has 4x4 maps, and by more than the seed spread? (issue #15 part 1)

    python -m experiments.central                  # the table from the committed runs (docs/results/central)
    python -m experiments.central --run            # first train the runs of the grid that are missing
    python -m experiments.central --run --norms bn,hn_g8 --batch-sizes 2,128 --seeds 0,1,2 --epochs 30
    python -m experiments.central --run --norms none --conv ws --agc-clip 0.16 --batch-sizes 4 --lr 0.1,0.4,1.6

Every run trains ``--model`` on ``--data`` with SGD (momentum 0.9, weight decay 5e-4), the linear lr
scaling rule (``lr * b / 128``), a cosine decay over all steps and crop-flip augmentation, and records the
test accuracy after every epoch in ``docs/results/central/<run>.json`` (small: commit it). A finished run
is never repeated; an interrupted run starts over (runs take minutes). ``--lr`` takes several learning rates
(a sweep), ``--conv ws --agc-clip`` FedWon's norm-free networks (``--norms none``). The table (also written
to ``docs/results/central.md``) has a row per model, data, epochs, norm (with its conv and clip) and
learning rate: the final accuracy as mean ± sample std over seeds and, per batch size, the gap to the same
row at the largest batch, marked ``*`` when it exceeds twice the larger of the two seed spreads.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedhn.data import crop_flip, load_dataset
from fedhn.models import CONVS, build_model
from fedhn.seeding import torch_generator
from fedhn.training import LR_SCALINGS, client_lr, epoch_batches, evaluate, train

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "results" / "central"
TABLE = ROOT / "docs" / "results" / "central.md"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-small.npz"


def method_label(norm: str, conv: str = "plain", agc_clip: float = 0.0) -> str:
    """The norm with what else defines the method: ``none+ws+agc0.16`` for FedWon, the norm alone otherwise."""
    return norm + (f"+{conv}" if conv != "plain" else "") + (f"+agc{agc_clip:g}" if agc_clip else "")


@dataclass(frozen=True)
class CentralRun:
    """One central run: ``model`` on the .npz ``data`` with ``norm`` (and ``conv``, ``agc_clip``) at ``batch_size``
    for ``epochs`` epochs, learning rate ``lr`` at batch 128 (scaled by ``lr_scaling``), seed ``seed``."""

    model: str
    data: Path
    norm: str
    batch_size: int
    seed: int
    epochs: int
    lr: float
    conv: str = "plain"
    agc_clip: float = 0.0
    lr_scaling: str = "linear"

    @property
    def name(self) -> str:
        """The file stem of the run's record."""
        method = method_label(self.norm, self.conv, self.agc_clip).replace(",", "_").replace("=", "-")
        scaling = "" if self.lr_scaling == "linear" else self.lr_scaling
        return (
            f"{self.model}-{self.data.stem}-{method}-b{self.batch_size}-e{self.epochs}-lr{self.lr:g}{scaling}"
            f"-s{self.seed}"
        )


def train_run(run: CentralRun) -> dict:
    """Train ``run``; its record: the settings, the test accuracy after each epoch, the seconds it took."""
    data = load_dataset(str(run.data))
    images, labels = data.normalized(data.x_train), data.y_train
    test_images, test_labels = data.normalized(data.x_test), data.y_test
    torch.manual_seed(run.seed)
    model = build_model(run.model, data.num_classes, run.norm, data.channels, data.image_size, conv=run.conv)
    batch_size, epochs = run.batch_size, run.epochs
    generator = torch_generator("central", run.seed)
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
        lr=client_lr(run.lr, batch_size, run.lr_scaling),
        momentum=0.9,
        weight_decay=5e-4,
        generator=generator,
        augment=lambda batch: crop_flip(batch, black, generator),
        after_step=after_step,
        agc_clip=run.agc_clip,
        lr_factor=lambda t: 0.5 * (1 + math.cos(math.pi * t / total)),
    )
    return {
        "model": run.model,
        "data": run.data.name,
        "norm": run.norm,
        "conv": run.conv,
        "agc_clip": run.agc_clip,
        "batch_size": batch_size,
        "seed": run.seed,
        "epochs": epochs,
        "lr": run.lr,
        "lr_scaling": run.lr_scaling,
        "test_accuracy": accuracy,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(records: list[dict]) -> str:
    """The markdown table of final accuracies (%), one row per (model, data, epochs, method, lr), one column per
    batch (records written before conv, agc_clip and lr_scaling were recorded: plain convs, no clipping, linear
    scaling; the lr column names any other scaling)."""
    groups: dict[tuple, dict[int, list[float]]] = {}
    for r in records:
        method = method_label(r["norm"], r.get("conv", "plain"), r.get("agc_clip", 0.0))
        key = (r["model"], r["data"], r["epochs"], method, r["lr"], r.get("lr_scaling", "linear"))
        groups.setdefault(key, {}).setdefault(r["batch_size"], []).append(100 * r["test_accuracy"][-1])
    batches = sorted({r["batch_size"] for r in records})
    lines = [
        "| model | data | epochs | norm | lr | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---" * (5 + len(batches)) + "|",
    ]
    for (model, data, epochs, method, lr, scaling), by_batch in sorted(groups.items()):
        largest = by_batch[max(by_batch)]
        cells = [_cell(by_batch[b], largest) if b in by_batch else "" for b in batches]
        rate = f"{lr:g}" + ("" if scaling == "linear" else f" {scaling}")
        lines.append(f"| {model} | {data} | {epochs} | {method} | {rate} | " + " | ".join(cells) + " |")
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


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="train the runs of the grid that are missing first")
    parser.add_argument("--model", default="resnet10")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a .npz (default: cifar10-small)")
    parser.add_argument("--norms", default="bn,hn_g8", help="comma-separated norm specs")
    parser.add_argument("--batch-sizes", default="2,128", help="comma-separated batch sizes")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--lr", default="0.1", help="comma-separated learning rates at batch 128 (see --lr-scaling): one run each"
    )
    parser.add_argument("--lr-scaling", default="linear", choices=LR_SCALINGS, help="how lr scales with the batch")
    parser.add_argument("--conv", default="plain", choices=CONVS, help="ws: scaled weight standardization (FedWon)")
    parser.add_argument("--agc-clip", type=float, default=0.0, help="adaptive gradient clipping (FedWon); 0: off")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (two 1-thread processes on disjoint grids train more runs per hour)",
    )
    args = parser.parse_args()
    try:
        args.lr = [float(lr) for lr in args.lr.split(",")]
    except ValueError:
        parser.error(f"--lr {args.lr!r}: give comma-separated numbers, e.g. 0.1,0.4")
    if args.run and not args.data.exists():
        parser.error(f"--data {args.data} does not exist; pass a .npz (x_train, y_train, x_test, y_test)")
    return args


def grid(args: argparse.Namespace) -> list[CentralRun]:
    """The runs the arguments name: every seed, batch size, norm and learning rate."""
    return [
        CentralRun(
            args.model,
            args.data,
            norm,
            int(batch),
            int(seed),
            args.epochs,
            lr,
            args.conv,
            args.agc_clip,
            args.lr_scaling,
        )
        for seed in args.seeds.split(",")
        for batch in args.batch_sizes.split(",")
        for norm in args.norms.split(",")
        for lr in args.lr
    ]


def main() -> None:
    args = arguments()
    if args.run:
        RUNS.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        for run in grid(args):
            path = RUNS / f"{run.name}.json"
            if not path.exists():
                record = train_run(run)
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
