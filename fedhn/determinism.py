"""Process-wide settings that make GPU runs bitwise reproducible (run-config key ``deterministic``).

PyTorch's fast defaults are not reproducible on GPU: cuBLAS splits reductions by a workspace that varies with
the stream's history, cuDNN may pick convolution algorithms that differ from run to run, and some CUDA backward
kernels accumulate with atomics in arbitrary order. :func:`apply` turns all three off for this process (the
fused norm's Triton kernels use no atomics and need nothing). It must run before the process's first cuBLAS
call: the workspace size ``CUBLAS_WORKSPACE_CONFIG`` is read when cuBLAS's handle is created. The ClientApp
applies it when it parses the run config, before any training; so does the ServerApp.
"""

from __future__ import annotations

import os

import torch

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "apply"]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""The workspace setting NVIDIA documents for deterministic cuBLAS (a user's own value is kept)."""


def apply(deterministic: bool) -> None:
    """Turn deterministic algorithms on (``torch.use_deterministic_algorithms``, cuDNN deterministic and not
    benchmarking, ``CUBLAS_WORKSPACE_CONFIG``) or back to PyTorch's defaults for this process."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
