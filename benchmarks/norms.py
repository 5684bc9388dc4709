"""Every norm preset against nn.BatchNorm2d, training mode: forward and forward+backward.

    python -m benchmarks.norms [--quick] [--threads 2] [--device cuda] [--dtype bfloat16]

Times are ratios to nn.BatchNorm2d measured side by side (interleaved repeats, median). ``(general
path)`` rows time the same layer without the fused kernel. ``fwd`` records the autograd graph, as in
training. Memory floors: ``copy`` copies the input into a preallocated tensor (read + write of the same
bytes); ``clone`` also allocates the copy, as every layer allocates its output (fresh pages fault in).
On CUDA the baseline is cuDNN's BatchNorm, each timing waits for the GPU (``torch.cuda.synchronize``), and
``--dtype bfloat16``/``float16`` feeds half inputs to float32 layers (as autocast does).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.timing import environment, markdown_table, measure, synchronizer
from fedhn.norms import norm_layer

SHAPES = ((128, 64, 32, 32), (4, 64, 32, 32), (2, 256, 8, 8), (128, 512, 4, 4))
PRESETS = ("bn", "in", "ln", "gn", "en", "hn", "hn_g8", "sn", "mean=bn,std=bn+en")
FUSED = ("hn", "hn_g8", "mean=bn,std=bn+en")
BASELINE = "nn.BatchNorm2d"
FLOORS = ("copy (bandwidth floor)", "clone (allocation + copy)")


def layers(channels: int, device: torch.device) -> dict[str, Callable[[Tensor], Tensor]]:
    """Every layer to time, in training mode, by row name."""
    table: dict[str, nn.Module] = {
        BASELINE: nn.BatchNorm2d(channels),
        "nn.GroupNorm(32)": nn.GroupNorm(32, channels),
    }
    table |= {preset: norm_layer(preset)(channels) for preset in PRESETS}
    runs: dict[str, Callable[[Tensor], Tensor]] = {name: layer.to(device) for name, layer in table.items()}
    general = {preset: norm_layer(preset)(channels).to(device)._forward_heterologous for preset in FUSED}
    return runs | {f"{preset} (general path)": run for preset, run in general.items()}


def time_shape(
    shape: tuple[int, ...], repeats: int, min_seconds: float, device: torch.device, dtype: torch.dtype
) -> dict[str, tuple[float, float]]:
    """Seconds of forward and of forward+backward per row name for inputs of ``shape``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
    grad = torch.randn(shape, generator=generator).to(device, dtype)
    floor = torch.empty_like(grad)
    table = {name: layer for name, layer in layers(shape[1], device).items() if _runs(name, layer, x)}

    def forward_backward(layer: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            x.grad = None
            layer(x).backward(grad)

        return run

    floors = dict(zip(FLOORS, (lambda: floor.copy_(x.detach()), lambda: x.detach().clone()), strict=True))
    sync = synchronizer(device)
    forward = measure(
        {name: (lambda f=layer: f(x)) for name, layer in table.items()} | floors, repeats, min_seconds, sync
    )
    both = measure(
        {name: forward_backward(layer) for name, layer in table.items()} | floors, repeats, min_seconds, sync
    )
    return {name: (forward[name], both[name]) for name in forward}


def _runs(name: str, layer: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    """Whether ``layer`` takes ``x`` (some PyTorch kernels refuse half inputs with float32 weights)."""
    try:
        layer(x)
    except RuntimeError as error:
        print(f"skipped {name} for {x.dtype} inputs of shape {tuple(x.shape)}: {str(error).splitlines()[0]}")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of short timings (about 1 minute)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="input dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    repeats, min_seconds = (3, 0.02) if args.quick else (7, 0.05)

    results = {shape: time_shape(shape, repeats, min_seconds, device, dtype) for shape in SHAPES}
    names = [name for name in results[SHAPES[0]] if all(name in results[s] for s in SHAPES)]
    header = ["layer"] + [f"{shape} {mode}" for shape in SHAPES for mode in ("fwd", "fwd+bwd")]
    rows = [[name] + [results[s][name][m] / results[s][BASELINE][m] for s in SHAPES for m in (0, 1)] for name in names]
    rows.append([f"{BASELINE} time (us)"] + [f"{results[s][BASELINE][m] * 1e6:.0f}" for s in SHAPES for m in (0, 1)])
    print(f"Time / {BASELINE} time, training mode, {device.type} {args.dtype} inputs ({environment()})\n")
    print(markdown_table(header, rows))
    ratios = {name: [results[s][name][1] / results[s][BASELINE][1] for s in SHAPES] for name in FUSED}
    print(
        f"\nsummary: fwd+bwd / {BASELINE} over shapes {', '.join(map(str, SHAPES))}: "
        + "; ".join(f"{name} " + " ".join(f"{r:.2f}" for r in values) for name, values in ratios.items())
    )


if __name__ == "__main__":
    main()
