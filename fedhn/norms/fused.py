"""Fused CPU training path for HeterologousNorm with the mean set ``bn`` and std sets pooled over the batch.

Covers ``hn``, ``hn_g<G>`` and softmax mixtures of batch std sets such as ``mean=bn,std=bn+en``. The
forward and the hand-derived backward (derivation in :mod:`fedhn.norms.fused_kernel`) make the passes over the input
of ``nn.BatchNorm2d``'s CPU kernels: a reduction per channel, then one elementwise pass. The kernel is
plain C with OpenMP (``torch.get_num_threads()`` threads; on Linux it binds to the libgomp PyTorch loaded),
compiled with the system C compiler (``$CC``, else ``cc``) at first use and cached in
``$XDG_CACHE_HOME/fedhn`` (default ``~/.cache/fedhn``). Without a compiler, :func:`accepts` is false (after
one warning) and the layer keeps its general path.

:func:`accepts` takes contiguous float32/float64 CPU tensors outside ``torch.compile`` tracing; CUDA
tensors keep the general path. The function is once differentiable (no double backward, no forward-mode
AD, no ``vmap``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fedhn.norms.fused_kernel import SOURCE
from fedhn.norms.pixel_sets import PixelSet

__all__ = ["Running", "accepts", "fused_norm"]

_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
_SCALARS = {torch.float32: "float", torch.float64: "double"}
# Below this many elements one thread is faster than waking the OpenMP team.
_PARALLEL_MIN_ELEMENTS = 32768
_P, _I = ctypes.c_void_p, ctypes.c_int64
_D = ctypes.c_double
# fused_forward(x, y, n, c, s, num_sets, groups, set_weight, weight, bias, eps, mean, set_mean, set_var,
#               invstd, running_mean, running_var, running_center, factor, threads)
_FORWARD_ARGS = [_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _D, _P, _P, _P, _P, _P, _P, _P, _D, ctypes.c_int]
# fused_backward(dy, x, dx, n, c, s, num_sets, groups, set_weight, weight, mean, set_mean, set_var, invstd,
#                grad_weight, grad_bias, grad_set_weight, threads)
_BACKWARD_ARGS = [_P, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]


class Running(NamedTuple):
    """A layer's running statistics, updated in place by the forward: ``mean`` (C), ``var`` (every std
    set's groups), ``center`` (their means, or None where the layer derives them) and the update
    ``factor`` (momentum, or 1 / batches for a cumulative average)."""

    mean: Tensor
    var: Tensor
    center: Tensor | None
    factor: float


def accepts(x: Tensor, weight: Tensor | None, running_mean: Tensor | None) -> bool:
    """Whether :func:`fused_norm` can run on ``x`` (with the layer's ``weight`` and ``running_mean``) here."""
    return (
        x.device.type == "cpu"
        and x.dtype in _SCALARS
        and all(t is None or t.dtype == x.dtype for t in (weight, running_mean))
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and _library(x.dtype) is not None
    )


def fused_norm(
    x: Tensor,
    std_sets: tuple[PixelSet, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    var_logits: Tensor | None,
    eps: float,
    running: Running | None,
) -> Tensor:
    """Training-mode normalization with the per-channel mean (``bn``) and the std of ``std_sets``
    (resolved batch sets, softmax-weighted by ``var_logits`` when several); moves the ``running``
    statistics towards the batch's, as ``HeterologousNorm`` stores them (unbiased variances)."""
    groups = tuple(s.groups or x.shape[1] for s in std_sets)
    return _FusedNorm.apply(x, weight, bias, var_logits, groups, eps, running)


class _FusedNorm(torch.autograd.Function):
    """The fused forward of ``x``; the statistics vector (see :func:`_layout`) is kept for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, var_logits, groups, eps, running):
        n, c = x.shape[:2]
        set_weight = _ONE if var_logits is None else torch.softmax(var_logits.detach().double(), 0)
        y = torch.empty_like(x)
        stats = x.new_empty(sum(_layout(c, groups)))
        _check(
            _library(x.dtype).fused_forward(
                x.data_ptr(),
                y.data_ptr(),
                n,
                c,
                x.numel() // (n * c),
                len(groups),
                _groups_array(groups),
                set_weight.data_ptr(),
                _pointer(weight),
                _pointer(bias),
                eps,
                *_stat_pointers(stats, c, groups),
                *((None, None, None, 0.0) if running is None else (*map(_pointer, running[:3]), running.factor)),
                _threads(x),
            )
        )
        ctx.save_for_backward(x, weight, stats, set_weight)
        ctx.groups = groups
        ctx.logits_dtype = None if var_logits is None else var_logits.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight, stats, set_weight = ctx.saved_tensors
        groups = ctx.groups
        n, c = x.shape[:2]
        grad_y = grad_y.contiguous()  # held: the kernel reads its memory
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_weight, grad_bias = x.new_empty(2, c)
        grad_set_weight = set_weight.new_empty(len(groups)) if ctx.needs_input_grad[3] else None
        mean, set_mean, set_var, invstd = _stat_pointers(stats, c, groups)
        _check(
            _library(x.dtype).fused_backward(
                grad_y.data_ptr(),
                x.data_ptr(),
                _pointer(grad_x),
                n,
                c,
                x.numel() // (n * c),
                len(groups),
                _groups_array(groups),
                set_weight.data_ptr(),
                _pointer(weight),
                mean,
                set_mean,
                set_var,
                invstd,
                grad_weight.data_ptr(),
                grad_bias.data_ptr(),
                _pointer(grad_set_weight),
                _threads(x),
            )
        )
        grad_logits = None
        if grad_set_weight is not None:
            weighted = set_weight * grad_set_weight
            grad_logits = (weighted - set_weight * weighted.sum()).to(ctx.logits_dtype)
        affine = weight is not None
        return grad_x, grad_weight if affine else None, grad_bias if affine else None, grad_logits, None, None, None


_ONE = torch.ones(1, dtype=torch.float64)


def _layout(channels: int, groups: tuple[int, ...]) -> list[int]:
    """Lengths of the parts of the statistics vector: channel means, the means and (biased) variances of
    every std set's groups, and the inverse std of each channel."""
    return [channels, sum(groups), sum(groups), channels]


def _stat_pointers(stats: Tensor, channels: int, groups: tuple[int, ...]) -> list[int]:
    """Addresses of the parts of the statistics vector, in :func:`_layout`'s order."""
    offsets = itertools.accumulate(_layout(channels, groups)[:-1], initial=0)
    return [stats.data_ptr() + offset * stats.element_size() for offset in offsets]


@functools.cache
def _groups_array(groups: tuple[int, ...]) -> ctypes.Array:
    return (ctypes.c_int64 * len(groups))(*groups)


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _threads(x: Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= _PARALLEL_MIN_ELEMENTS else 1


def _check(status: int) -> None:
    if status:
        raise MemoryError("the fused norm kernel could not allocate its per-channel workspace")


@functools.cache
def _library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled kernel for ``dtype`` (built once per source, compiler and flags), or ``None``
    with a warning when it cannot be built."""
    scalar = _SCALARS[dtype]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn(
            "fedhn: no C compiler found (set CC); heterologous norms use the slower general path", stacklevel=3
        )
        return None
    command = [compiler, *_FLAGS, f"-DSCALAR={scalar}"]
    key = hashlib.sha256((SOURCE + " ".join(command)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedhn"
    path = cache / f"fused_norm_{scalar}_{key}.so"
    try:
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as build:
                source, built = Path(build) / "fused_kernel.c", Path(build) / path.name
                source.write_text(SOURCE)
                subprocess.run([*command, str(source), "-o", str(built), "-lm"], check=True, capture_output=True)
                os.replace(built, path)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = error.stderr.decode(errors="replace") if isinstance(error, subprocess.CalledProcessError) else error
        warnings.warn(
            f"fedhn: could not build the fused norm kernel ({detail}); heterologous norms use the slower general path",
            stacklevel=3,
        )
        return None
    library.fused_forward.argtypes = _FORWARD_ARGS
    library.fused_backward.argtypes = _BACKWARD_ARGS
    return library
