"""Clients trained by several processes at once, sharing one device: what a Ray simulation with fractional GPUs
(``client-resources-num-gpus = 1/P``) does with P single-client workers, each training its clients one by one.

:class:`ConcurrentProcesses` starts the P workers (spawned, each with its own CUDA context), gives each its share
of the clients, and is called like the other candidates of :mod:`benchmarks.packing`: one call has every worker
train its clients for one epoch and returns when all are done.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

import torch

from fedhn.models import build_model
from fedhn.training import client_lr, train

__all__ = ["ConcurrentProcesses"]


def _worker(norm, images, labels, batches, seeds, device, settings, commands, done) -> None:
    """Build this worker's clients on ``device``, then train them one epoch per command until None arrives."""
    images, labels = images.to(device), labels.to(device)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model("resnet8", 10, norm).to(device))
    done.put("ready")
    while commands.get() is not None:
        for k, (model, b) in enumerate(zip(models, batches, strict=True)):
            train(model, images[k], labels[k], batch_size=b, epochs=1, lr=client_lr(0.1, b, "linear"),
                  generator=torch.Generator().manual_seed(seeds[k]), **settings)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done.put("done")


class ConcurrentProcesses:
    """``processes`` workers sharing ``device``, worker p training clients p, p + P, p + 2P, ..."""

    def __init__(self, norm: str, images: torch.Tensor, labels: torch.Tensor, batches: Sequence[int],
                 device: torch.device, processes: int, settings: dict) -> None:  # fmt: skip
        context = multiprocessing.get_context("spawn")
        self._done = context.Queue()
        self._commands = [context.Queue() for _ in range(processes)]
        self._workers = []
        for p in range(processes):
            mine = list(range(p, len(batches), processes))
            arguments = (norm, images[mine], labels[mine], [batches[k] for k in mine], mine, device, settings)
            worker = context.Process(target=_worker, args=(*arguments, self._commands[p], self._done), daemon=True)
            worker.start()
            self._workers.append(worker)
        for _ in self._workers:
            self._wait()

    def _wait(self) -> None:
        message = self._done.get(timeout=600)
        if message not in ("ready", "done"):
            raise RuntimeError(f"a worker failed: {message}")

    def __call__(self) -> None:
        for commands in self._commands:
            commands.put("go")
        for _ in self._workers:
            self._wait()

    def close(self) -> None:
        """Stop the workers (each exits at None) and wait for them."""
        for commands in self._commands:
            commands.put(None)
        for worker in self._workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
