"""Local training throughput (samples/s) of ``fedhn.training.train`` at tiny and large batches, on CPU.

    python -m benchmarks.throughput [--quick] [--threads 1 2] [--batches 2 128] [--norms bn hn]

One call trains resnet8 for one epoch on random CIFAR-like 32x32x3 tensors (as a simulated client
does: normalized images held as one tensor, linear lr scaling, momentum 0.9, weight decay 5e-4),
with ``torch.set_num_threads`` as given (1 is what a simulated client gets with
``client-resources-num-cpus=1``). ``before`` is :func:`fedhn.training.train` as it was before issue #4
part 4, SGD with ``foreach`` (``fused=False``); ``after`` is its default, fused SGD. They are
timed side by side: paired calls in ABBA order; a speed-up is the median of the pairs' ratios, of
wall time and of this process's CPU time (which waiting for a busy core does not inflate).

2-thread rows mean something only on an otherwise idle machine: with other jobs on the 2 cores,
OpenMP's default spin-waiting can make 2 threads many times slower than 1, and ``OMP_WAIT_POLICY=PASSIVE``
(set before torch loads) avoids that at batch 128 but makes every parallel region of a batch-2 step
pay a thread wake-up.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.timing import environment, markdown_table
from fedhn.models import build_model
from fedhn.training import client_lr, sgd, train

NORMS = ("bn", "hn")
BATCHES = (2, 128)
THREADS = (1, 2)


def candidates(norm: str, batch: int, examples: int) -> dict[str, Callable[[], object]]:
    """One epoch of ``before`` and of ``after`` on the same data, each with its own model (same init)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(examples, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (examples,), generator=generator)
    settings = dict(batch_size=batch, epochs=1, lr=client_lr(0.1, batch, "linear"), momentum=0.9, weight_decay=5e-4)
    table = {}
    for name, fused in (("before", False), ("after", True)):
        torch.manual_seed(0)
        model = build_model("resnet8", num_classes=10, norm=norm)
        table[name] = lambda fused=fused, model=model: train(
            model, images, labels, generator=torch.Generator().manual_seed(1), fused=fused, **settings
        )
    return table


def paired(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Per candidate: median wall seconds per call, and the medians over repeats of its wall-time and
    CPU-time ratios to the first candidate's call in the same repeat.

    Calls alternate in ABBA order and each ratio pairs calls made within a second of each other, so
    that the load of other processes (which drifts over seconds on a shared machine) falls on both
    alike; CPU time (this process) is also insensitive to waiting for a core.
    """
    for run in candidates.values():
        run()  # warm-up
    names = list(candidates)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeats):
        for name in names if index % 2 == 0 else reversed(names):
            start, start_cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    base = names[0]
    return {
        name: (
            statistics.median(wall[name]),
            statistics.median(w / b for w, b in zip(wall[name], wall[base], strict=True)),
            statistics.median(c / b for c, b in zip(cpu[name], cpu[base], strict=True)),
        )
        for name in names
    }


def optimizer_steps(norm: str, batch: int = 2) -> dict[str, Callable[[], object]]:
    """100 SGD steps (momentum, weight decay) over resnet8's parameters, ``foreach`` (before) and
    ``fused`` (after): the part of a training step this change touches, timed alone."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, norm=norm)
    F.cross_entropy(model(torch.randn(batch, 3, 32, 32)), torch.arange(batch) % 10).backward()
    table = {}
    for name, fused in (("before", False), ("after", True)):
        optimizer = sgd(model, 1e-6, 0.9, 5e-4, torch.device("cpu"), fused)
        table[name] = lambda optimizer=optimizer: [optimizer.step() for _ in range(100)]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 repeats instead of 25 (about 2 minutes instead of 7)")
    parser.add_argument("--threads", type=int, nargs="+", default=THREADS, help="torch threads (default 1 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES, help="batch sizes (default 2 128)")
    parser.add_argument("--norms", nargs="+", default=NORMS, help="norm presets (default bn hn)")
    args = parser.parse_args()
    repeats = 7 if args.quick else 25
    if "OMP_WAIT_POLICY" not in os.environ and os.getloadavg()[0] > (os.cpu_count() or 1):
        print("warning: the machine is busy and OMP_WAIT_POLICY is unset: 2-thread timings will collapse (see --help)")

    rows, speedups = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            examples = max(4 * batch, 128)  # 64 steps at batch 2, 4 steps at batch 128
            for norm in args.norms:
                result = paired(candidates(norm, batch, examples), repeats)
                (before, _, _), (after, wall_ratio, cpu_ratio) = result["before"], result["after"]
                rows.append(
                    [
                        threads,
                        batch,
                        norm,
                        f"{examples / before:.0f}",
                        f"{examples / after:.0f}",
                        1 / wall_ratio,
                        1 / cpu_ratio,
                        f"{after / math.ceil(examples / batch) * 1e3:.2f}",
                    ]
                )
                speedups.append(f"{norm} b{batch} t{threads} {1 / wall_ratio:.2f}")
    torch.set_num_threads(1)
    steps = paired(optimizer_steps("hn"), repeats)
    torch.set_num_threads(args.threads[-1])
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"\nSamples/s of one epoch of resnet8 training on 32x32x3 inputs, {repeats} paired repeats, "
        f"OMP_WAIT_POLICY={policy}, load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())} ({environment()})\n"
    )
    header = [
        "threads",
        "batch",
        "norm",
        "before (samples/s)",
        "after (samples/s)",
        "speed-up (wall)",
        "speed-up (CPU time)",
        "ms/step after",
    ]
    print(markdown_table(header, rows))
    before_us, after_us = steps["before"][0] * 1e4, steps["after"][0] * 1e4
    print(
        f"\nSGD step alone (resnet8, 1 thread): foreach {before_us:.0f} us, fused {after_us:.0f} us "
        f"(speed-up {1 / steps['after'][1]:.2f})"
    )
    print(f"\nsummary: after/before samples/s (paired wall-time medians): {', '.join(speedups)}")


if __name__ == "__main__":
    main()
