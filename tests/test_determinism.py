"""``deterministic = true``: the settings take effect in a fresh worker process when the ClientApp parses its
run config (before any training), and on CUDA two runs in separate processes give the same bits."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedhn import determinism

ROOT = Path(__file__).resolve().parent.parent

_WORKER = """
import json, os, sys, torch
from fedhn.app.config import RunConfig
from fedhn.client_app import run_config
from fedhn.training import train
from fedhn.models import build_model

run_config(RunConfig(deterministic=sys.argv[1] == "true").to_dict())
settings = {
    "algorithms": torch.are_deterministic_algorithms_enabled(),
    "cudnn_deterministic": torch.backends.cudnn.deterministic,
    "cudnn_benchmark": torch.backends.cudnn.benchmark,
    "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
}
torch.manual_seed(0)
model = build_model("resnet8", 4, "hn")
result = train(model, torch.randn(6, 3, 8, 8), torch.arange(6) % 4, batch_size=2, epochs=1, lr=0.1, momentum=0.9,
               weight_decay=5e-4, generator=torch.Generator().manual_seed(0))
print(json.dumps({**settings, "loss": result.loss}))
"""


def _worker(deterministic: bool) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "CUBLAS_WORKSPACE_CONFIG"}
    command = [sys.executable, "-c", _WORKER, "true" if deterministic else "false"]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=300).stdout
    return json.loads(output.splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="the ClientApp needs flwr")
def test_a_fresh_worker_applies_the_settings_when_it_parses_the_run_config_and_trains():
    on, off = _worker(True), _worker(False)
    assert on["algorithms"] and on["cudnn_deterministic"] and not on["cudnn_benchmark"]
    assert on["cublas"] == determinism.CUBLAS_WORKSPACE_CONFIG
    assert not off["algorithms"] and not off["cudnn_deterministic"] and off["cublas"] is None
    assert on["loss"] == off["loss"]  # on CPU the settings change nothing: training was already reproducible


def test_a_users_own_cublas_workspace_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    try:
        determinism.apply(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and torch.are_deterministic_algorithms_enabled()
    finally:
        determinism.apply(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_deterministic_cuda_runs_match_bitwise():
    """resnet8 with hn, trained one by one and packed: see benchmarks/deterministic.py."""
    command = [sys.executable, "-m", "benchmarks.deterministic", "--device", "cuda", "--digest", "on"]
    digests = [
        json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout)[
            "digest"
        ]
        for _ in range(2)
    ]
    assert digests[0] == digests[1]
