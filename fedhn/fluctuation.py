"""Statistics fluctuation (paper section 4.6, Figures 6 and 7).

Trains the paper's MLP and records, at every training step, the batch statistics that BN and EN
would compute from the input of each norm layer: for chosen neurons, BN_mean and BN_std (the neuron's
mean and biased std over the batch) and the layer's EN_mean and EN_std (over the whole (N, C) batch).
The fluctuation of a statistic is its std over the last training steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedhn.data import ImageData
from fedhn.models import build_model
from fedhn.norms import is_norm, parse_pixel_set
from fedhn.norms.functional import set_moments
from fedhn.plotting import pyplot
from fedhn.training import client_lr, epoch_batches, evaluate, train

__all__ = [
    "STATISTICS",
    "Neuron",
    "FluctuationRun",
    "parse_neurons",
    "parse_batch_sizes",
    "batch_statistics",
    "StatisticsRecorder",
    "record_statistics",
    "fluctuation",
    "fluctuation_table",
    "plot_fluctuation",
    "plot_evolution",
    "write_outputs",
    "study",
]

STATISTICS = ("BN_mean", "BN_std", "EN_mean", "EN_std")
_BN, _EN = parse_pixel_set("bn"), parse_pixel_set("en")


@dataclass(frozen=True)
class Neuron:
    """Neuron ``index`` of norm layer ``layer``, both 1-based (the paper's "i-j")."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"{self.layer}-{self.index}"


@dataclass(frozen=True)
class FluctuationRun:
    """One training run's recorded statistics."""

    batch_size: int
    lr: float
    steps: int
    epochs: float  # steps / batches per epoch
    seconds: float
    test_accuracy: float
    series: np.ndarray  # (steps, len(STATISTICS), neurons), float32


def parse_neurons(text: str, widths: Sequence[int]) -> tuple[Neuron, ...]:
    """Parse ``"1-1,4-2"`` (layer-neuron, 1-based) for a model whose norm layers have ``widths`` neurons.

    Raises:
        ValueError: a malformed item, or a layer or neuron out of range (the message gives the range).
    """
    neurons = []
    for item in (part.strip() for part in text.split(",")):
        layer, _, index = item.partition("-")
        if not (layer.strip().isdigit() and index.strip().isdigit()):
            raise ValueError(f"Cannot parse neuron {item!r}: write layer-neuron, 1-based, e.g. 1-1,4-2")
        neuron = Neuron(int(layer), int(index))
        if not 1 <= neuron.layer <= len(widths):
            raise ValueError(f"Neuron {neuron}: layer {neuron.layer} is out of range; valid layers are 1-{len(widths)}")
        if not 1 <= neuron.index <= widths[neuron.layer - 1]:
            raise ValueError(
                f"Neuron {neuron}: neuron {neuron.index} is out of range; "
                f"layer {neuron.layer} has neurons 1-{widths[neuron.layer - 1]}"
            )
        neurons.append(neuron)
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"Neurons {text!r} name a neuron twice; list each once")
    return tuple(neurons)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"128,4"``; every batch size must be at least 2 (BN cannot train on one example)."""
    items = [part.strip() for part in text.split(",")]
    if not all(item.isdigit() and int(item) >= 2 for item in items) or len(set(map(int, items))) != len(items):
        raise ValueError(f"Batch sizes {text!r}: give distinct comma-separated integers of at least 2, e.g. 128,4")
    return tuple(int(item) for item in items)


def batch_statistics(x: Tensor, channels: Tensor) -> Tensor:
    """BN_mean, BN_std of ``channels`` and EN_mean, EN_std of the layer, from a norm input (N, C, ...).

    Returns a (4, len(channels)) tensor; the std is the biased one, as BN and EN normalize with.
    """
    moments = set_moments(x.reshape(x.shape[0], x.shape[1], -1), (_BN, _EN))
    (bn_mean, bn_var), (en_mean, en_var) = moments[_BN], moments[_EN]
    bn_mean, bn_std = bn_mean[0, channels], bn_var[0, channels].sqrt()
    return torch.stack([bn_mean, bn_std, en_mean[0, 0].expand_as(bn_mean), en_var[0, 0].sqrt().expand_as(bn_mean)])


class StatisticsRecorder:
    """Forward pre-hooks on a model's norm layers that write the chosen neurons' statistics of
    step :attr:`step` into :attr:`series` (steps, 4, neurons), on the model's device (no host sync)."""

    def __init__(self, model: nn.Module, neurons: Sequence[Neuron], steps: int) -> None:
        norms = [module for module in model.modules() if is_norm(module)]
        device = next(model.parameters()).device
        self.series = torch.zeros(steps, len(STATISTICS), len(neurons), device=device)
        self.step = 0
        self._handles = []
        for layer, norm in enumerate(norms, start=1):
            columns = [k for k, neuron in enumerate(neurons) if neuron.layer == layer]
            if columns:
                channels = torch.tensor([neurons[k].index - 1 for k in columns], device=device)
                hook = self._hook(channels, torch.tensor(columns, device=device))
                self._handles.append(norm.register_forward_pre_hook(hook))

    def _hook(self, channels: Tensor, columns: Tensor) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            with torch.no_grad():
                self.series[self.step].index_copy_(1, columns, batch_statistics(inputs[0], channels))

        return record

    def advance(self) -> None:
        """Move on to the next training step."""
        self.step += 1

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


def record_statistics(
    data: ImageData,
    neurons: Sequence[Neuron],
    *,
    batch_size: int,
    epochs: int,
    max_steps: int | None,
    lr: float,
    momentum: float,
    weight_decay: float,
    norm: str,
    seed: int,
    device: torch.device,
) -> FluctuationRun:
    """Train a fresh MLP with SGD for ``epochs`` epochs (at most ``max_steps`` steps) at ``batch_size``
    and learning rate ``lr * batch_size / 128`` (linear scaling), recording every step's statistics."""
    torch.manual_seed(seed)
    model = build_model("mlp", data.num_classes, norm, data.channels, data.image_size).to(device)
    images, labels = data.normalized(data.x_train).to(device), data.y_train.to(device)
    batches_per_epoch = len(epoch_batches(len(images), batch_size, torch.Generator()))
    steps = min(epochs * batches_per_epoch, max_steps or math.inf)
    step_lr = client_lr(lr, batch_size, "linear")
    recorder = StatisticsRecorder(model, neurons, steps)
    start = time.perf_counter()
    train(
        model,
        images,
        labels,
        batch_size=batch_size,
        epochs=epochs,
        lr=step_lr,
        momentum=momentum,
        weight_decay=weight_decay,
        generator=torch.Generator().manual_seed(seed),
        max_steps=steps,
        after_step=recorder.advance,
    )
    series = recorder.series.cpu().numpy()
    seconds = time.perf_counter() - start
    recorder.remove()
    accuracy = evaluate(model, data.normalized(data.x_test).to(device), data.y_test.to(device))[1]
    return FluctuationRun(batch_size, step_lr, steps, steps / batches_per_epoch, seconds, accuracy, series)


def fluctuation(series: np.ndarray, last_steps: int) -> np.ndarray:
    """The std of each statistic over the last ``last_steps`` steps (all if fewer): (4, neurons)."""
    return series[-last_steps:].std(axis=0)


def fluctuation_table(runs: Sequence[FluctuationRun], neurons: Sequence[Neuron], last_steps: int) -> str:
    """Markdown: the fluctuation of each statistic (and its mean over the same steps) per neuron
    (rows) and batch size (columns), then the ratios BN/EN of the mean's and the std's fluctuations."""
    values = [fluctuation(run.series, last_steps) for run in runs]
    levels = [run.series[-last_steps:].mean(axis=0) for run in runs]
    header = "| neuron | statistic | " + " | ".join(f"bs {run.batch_size}" for run in runs) + " |"
    rule = "|---|---|" + "---|" * len(runs)
    lines = [header.replace("statistic", "statistic: fluctuation (mean)"), rule]
    for k, neuron in enumerate(neurons):
        for s, name in enumerate(STATISTICS):
            cells = " | ".join(f"{v[s, k]:.4g} ({level[s, k]:.3g})" for v, level in zip(values, levels, strict=True))
            lines.append(f"| {neuron} | {name} | {cells} |")
    lines += ["", header.replace("statistic", "ratio of fluctuations"), rule]
    for k, neuron in enumerate(neurons):
        for role, (bn, en) in (("mean", (0, 2)), ("std", (1, 3))):
            ratios = " | ".join(f"{v[bn, k] / v[en, k]:.3g}" for v in values)
            lines.append(f"| {neuron} | BN_{role} / EN_{role} | {ratios} |")
    return "\n".join(lines) + "\n"


def plot_fluctuation(runs: Sequence[FluctuationRun], neurons: Sequence[Neuron], last_steps: int, path: Path) -> Path:
    """Figure 6: bars of each statistic's fluctuation per neuron, one panel per batch size."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True, squeeze=False)
    width = 0.8 / len(STATISTICS)
    positions = np.arange(len(neurons))
    for panel, run in zip(axes[0], runs, strict=True):
        values = fluctuation(run.series, last_steps)
        for s, name in enumerate(STATISTICS):
            panel.bar(positions + (s - 1.5) * width, values[s], width, label=name, color=f"C{s}")
        panel.set(title=f"bs {run.batch_size}", xlabel="neuron", xticks=positions, yscale="log")
        panel.set_xticklabels([str(n) for n in neurons])
        panel.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"std over the last {min(last_steps, runs[0].steps)} steps (log)")
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(STATISTICS))
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_evolution(runs: Sequence[FluctuationRun], neurons: Sequence[Neuron], last_steps: int, path: Path) -> Path:
    """Figure 7: per neuron (rows) and batch size, BN_mean vs EN_mean and BN_std vs EN_std over the last steps."""
    plt = pyplot()
    figure, axes = plt.subplots(
        len(neurons), 2 * len(runs), figsize=(3.2 * 2 * len(runs), 2.2 * len(neurons)), squeeze=False
    )
    for r, run in enumerate(runs):
        window = run.series[-last_steps:]
        steps = np.arange(1 - len(window), 1)
        for k, neuron in enumerate(neurons):
            for c, (role, bn, en) in enumerate((("mean", 0, 2), ("std", 1, 3))):
                panel = axes[k, 2 * r + c]
                panel.plot(steps, window[:, bn, k], color="C0", linewidth=0.8, label=f"BN_{role}")
                panel.plot(steps, window[:, en, k], color="C1", linewidth=0.8, label=f"EN_{role}")
                panel.set_title(f"neuron {neuron}, bs {run.batch_size}: {role}", fontsize=9)
                panel.tick_params(labelsize=7)
                if k == len(neurons) - 1:
                    panel.set_xlabel("training step (0 = the last)", fontsize=8)
                if k == 0:
                    panel.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_outputs(
    runs: Sequence[FluctuationRun],
    neurons: Sequence[Neuron],
    last_steps: int,
    out_dir: Path,
    title: str,
    setting: str,
) -> str:
    """Write fluctuation.md (``title``, the ``setting`` paragraph, the runs and the table),
    fluctuation.png, evolution.png and statistics.npz into ``out_dir``; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_table = ["| batch size | lr | steps | epochs | test accuracy | time (s) |", "|---|---|---|---|---|---|"]
    runs_table += [
        f"| {run.batch_size} | {run.lr:.4g} | {run.steps} | {run.epochs:.3g} | {run.test_accuracy:.4f} | "
        f"{run.seconds:.1f} |"
        for run in runs
    ]
    windows = ", ".join(f"{min(last_steps, run.steps)} (bs {run.batch_size})" for run in runs)
    text = (
        f"# {title}\n\n{setting}\n\n"
        + "\n".join(runs_table)
        + f"\n\nFluctuation: the std of each statistic over the last training steps: {windows}.\n\n"
        + fluctuation_table(runs, neurons, last_steps)
    )
    (out_dir / "fluctuation.md").write_text(text)
    plot_fluctuation(runs, neurons, last_steps, out_dir / "fluctuation.png")
    plot_evolution(runs, neurons, last_steps, out_dir / "evolution.png")
    np.savez_compressed(
        out_dir / "statistics.npz",
        statistics=np.array(STATISTICS),
        neurons=np.array([str(n) for n in neurons]),
        batch_sizes=np.array([run.batch_size for run in runs]),
        lrs=np.array([run.lr for run in runs]),
        **{f"series_bs{run.batch_size}": run.series for run in runs},
    )
    return text


def study(
    data: ImageData,
    neurons: Sequence[Neuron],
    batch_sizes: Sequence[int],
    recipe: Mapping[str, Any],
    last_steps: int,
    out_dir: Path,
    command: str,
    echo: Callable[[str], None] = print,
) -> str:
    """One :func:`record_statistics` run per batch size with the training ``recipe`` (its keyword
    arguments but the batch size), then :func:`write_outputs`; return the Markdown."""
    runs = []
    for size in batch_sizes:
        echo(f"Training at batch size {size} ...")
        runs.append(record_statistics(data, neurons, batch_size=size, **recipe))
    r = recipe
    cap = f" capped at {r['max_steps']} steps" if r["max_steps"] else ""
    title = f"Statistics fluctuation: MLP 4 x 128 with {r['norm']} on {data.name}"
    setting = (
        f"SGD, lr {r['lr']} x bs/128, momentum {r['momentum']}, weight decay {r['weight_decay']}, "
        f"{r['epochs']} epochs{cap}, seed {r['seed']}, on {r['device']}. Command: `{command}`"
    )
    return write_outputs(runs, neurons, last_steps, out_dir, title, setting)
