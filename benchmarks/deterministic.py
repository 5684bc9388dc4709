"""What ``deterministic = true`` costs, and whether it makes training bitwise reproducible.

    python -m benchmarks.deterministic [--device cuda] [--quick]
    python -m benchmarks.deterministic --device cuda --digest on     # SHA-256 of one run's final weights

One run: resnet8 with hn, 4 clients of 64 random CIFAR-shaped examples (no augmentation: fedhn.data needs
flwr-datasets, which the GPU check machine lacks), one epoch
at batch 16, trained one by one (``fedhn.training.train``) and packed (``fedhn.cohort``). Every setting runs in
a fresh process (``CUBLAS_WORKSPACE_CONFIG`` counts at the first cuBLAS call); ``off`` and ``on`` processes
alternate and the cost is the median ratio of their samples/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time

import torch

from fedhn import determinism
from fedhn.cohort import Client, pack, train_packed, unpack
from fedhn.models import build_model
from fedhn.training import train

CLIENTS, EXAMPLES, BATCH = 4, 64, 16
SETTINGS = dict(epochs=1, momentum=0.9, weight_decay=5e-4)


def _clients(device: torch.device) -> list[Client]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(CLIENTS, EXAMPLES, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 10, (CLIENTS, EXAMPLES), generator=generator).to(device)
    return [Client(images[k], labels[k], BATCH, 0.05, torch.Generator().manual_seed(k)) for k in range(CLIENTS)]


def _models(device: torch.device) -> list[torch.nn.Module]:
    models = []
    for seed in range(CLIENTS):
        torch.manual_seed(seed)
        models.append(build_model("resnet8", 10, "hn").to(device))
    return models


def run_once(device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The final states of the clients trained one by one, then of the same clients trained packed."""
    states = []
    for model, client in zip(_models(device), _clients(device), strict=True):
        train(model, client.images, client.labels, batch_size=BATCH, lr=client.lr, generator=client.generator,
              **SETTINGS)  # fmt: skip
        states.append(model.state_dict())
    cohort = pack(_models(device))
    train_packed(cohort, _clients(device), **SETTINGS)
    return states + unpack(cohort)


def digest(states: list[dict[str, torch.Tensor]]) -> str:
    """SHA-256 of every tensor's bytes, in order."""
    sha = hashlib.sha256()
    for state in states:
        for key, value in state.items():
            sha.update(key.encode())
            sha.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _child(device: torch.device, deterministic: bool, repeats: int) -> dict[str, float | str]:
    determinism.apply(deterministic)
    states = run_once(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    samples = 2 * CLIENTS * EXAMPLES
    return {"digest": digest(states), "samples_per_s": samples / statistics.median(seconds) if seconds else 0.0}


def _spawn(device: str, setting: str, repeats: int) -> dict[str, float | str]:
    command = [sys.executable, "-m", "benchmarks.deterministic", "--device", device, "--child", setting]
    output = subprocess.run([*command, "--repeats", str(repeats)], check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="2 processes per setting, 2 repeats each")
    parser.add_argument("--digest", choices=("on", "off"), help="print one run's digest with this setting")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child or args.digest:
        print(json.dumps(_child(device, (args.child or args.digest) == "on", args.repeats if args.child else 0)))
        return
    rounds, repeats = (2, 2) if args.quick else (3, 3)
    results = {"off": [], "on": []}
    for index in range(rounds):
        for setting in ("off", "on") if index % 2 == 0 else ("on", "off"):
            results[setting].append(_spawn(args.device, setting, repeats))
    speed = {s: statistics.median(r["samples_per_s"] for r in runs) for s, runs in results.items()}
    same = {s: len({r["digest"] for r in runs}) == 1 for s, runs in results.items()}
    print(
        f"{args.device}, torch {torch.__version__}: resnet8 hn, {CLIENTS} clients x {EXAMPLES} examples, batch {BATCH}"
    )
    print(f"samples/s: off {speed['off']:.0f}, on {speed['on']:.0f}; on/off {speed['on'] / speed['off']:.2f}")
    print(f"bitwise equal across {rounds} processes: off {same['off']}, on {same['on']}")


if __name__ == "__main__":
    main()
