"""Eval latency of CIFAR ResNets per norm, unfolded and folded (:func:`fedhn.folding.fold_norms`), on CPU.

    python -m benchmarks.inference [--quick] [--threads 2] [--models resnet20 resnet18] [--batches 1 128]

Times are ratios to the folded BN model measured side by side (interleaved repeats, median), on 32x32
inputs in ``torch.inference_mode``. Each model first takes two training steps so that its running
statistics are not at their init. ``gn`` is GroupNorm with 32 groups, or 8 where channels are too few.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.timing import environment, markdown_table, measure
from fedhn.folding import fold_norms
from fedhn.models import build_model

MODELS = ("resnet20", "resnet18")
NORMS = ("bn", "gn", "hn", "hn_g8")
BATCHES = (1, 128)
GN_GROUPS = {"resnet20": "gn_g8"}  # 32 groups do not divide resnet20's 16-channel layers
BASELINE = "bn folded"


def trained(name: str, norm: str) -> nn.Module:
    """``name`` with ``norm`` after two SGD steps at batch 8, in eval mode."""
    torch.manual_seed(0)
    model = build_model(name, norm=GN_GROUPS.get(name, norm) if norm == "gn" else norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        loss = model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def time_case(name: str, batch: int, repeats: int, min_seconds: float) -> tuple[dict[str, float], float]:
    """Seconds per eval forward of every (norm, folded) variant, and the largest relative difference
    between a folded model's outputs and its unfolded model's."""
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    candidates, worst = {}, 0.0
    for norm in NORMS:
        model = trained(name, norm)
        folded, _ = fold_norms(model)
        with torch.inference_mode():
            expected = model(x)
            worst = max(worst, ((folded(x) - expected).abs().max() / expected.abs().max()).item())
        candidates[norm] = lambda m=model: m(x)
        candidates[f"{norm} folded"] = lambda m=folded: m(x)
    with torch.inference_mode():
        return measure(candidates, repeats, min_seconds), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 1 minute)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", nargs="+", default=MODELS, help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--batches", nargs="+", type=int, default=BATCHES, help="default: 1 128")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, summary, worst = [], [], 0.0
    for name in args.models:
        for batch in args.batches:
            heavy = batch > 1 and name == "resnet18"
            repeats = (1 if args.quick else 5) if heavy else (3 if args.quick else 11)
            times, error = time_case(name, batch, repeats, 0.0 if heavy else 0.1)
            worst = max(worst, error)
            base = times[BASELINE]
            rows.append([f"{name}, batch {batch}"] + [times[k] / base for k in times] + [f"{base * 1e3:.1f}"])
            summary.append(
                f"{name} b{batch}: folded hn {times['hn folded'] / base:.2f}, "
                f"folded hn_g8 {times['hn_g8 folded'] / base:.2f}, gn {times['gn'] / base:.2f}"
            )
    print(f"Eval time / folded BN time ({environment()})\n")
    print(markdown_table(["model"] + list(times) + [f"{BASELINE} (ms)"], rows))
    print(f"\nlargest relative output difference, folded vs unfolded: {worst:.1e}")
    print("\nsummary: time / folded bn: " + "; ".join(summary))


if __name__ == "__main__":
    main()
