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

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fedhn.norms.fused_kernel import SOURCE
from fedhn.norms.pixel_sets import PixelSet

__all__ = ["accepts", "fused_norm"]

_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
_SCALARS = {torch.float32: "float", torch.float64: "double"}
# Below this many elements one thread is faster than waking the OpenMP team.
_PARALLEL_MIN_ELEMENTS = 32768
_P, _I = ctypes.c_void_p, ctypes.c_int64
# fused_forward(x, y, n, c, s, num_sets, groups, set_weight, weight, bias, eps, mean, var, set_mean, set_var,
#               invstd, threads)
_FORWARD_ARGS = [_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, ctypes.c_double, _P, _P, _P, _P, _P, ctypes.c_int]
# fused_backward(dy, x, dx, n, c, s, num_sets, groups, set_weight, weight, mean, set_mean, set_var, invstd,
#                grad_weight, grad_bias, grad_set_weight, threads)
_BACKWARD_ARGS = [_P, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]


def accepts(x: Tensor, weight: Tensor | None) -> bool:
    """Whether :func:`fused_norm` can run on ``x`` (and the layer's ``weight``) here."""
    return (
        x.device.type == "cpu"
        and x.dtype in _SCALARS
        and (weight is None or weight.dtype == x.dtype)
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
) -> tuple[Tensor, dict[PixelSet, tuple[Tensor, Tensor]]]:
    """Training-mode normalization with the per-channel mean (``bn``) and the std of ``std_sets``
    (resolved batch sets, softmax-weighted by ``var_logits`` when several).

    Returns the output and the moments ``{set: (mean (1, G), biased var (1, G))}`` of ``bn`` and of every
    std set, in the format of :func:`fedhn.norms.functional.set_moments` (without gradient).
    """
    channels = x.shape[1]
    groups = tuple(s.groups or channels for s in std_sets)
    y, stats = _FusedNorm.apply(x, weight, bias, var_logits, groups, eps)
    mean, var, set_mean, set_var, _ = stats.unsqueeze(0).split(_layout(channels, groups), dim=1)
    moments = {_BN: (mean, var)}
    for s, m, v in zip(std_sets, set_mean.split(groups, dim=1), set_var.split(groups, dim=1), strict=True):
        moments[s] = (m, v)
    return y, moments


class _FusedNorm(torch.autograd.Function):
    """The fused forward of ``x``, and the non-differentiable vector of its statistics (see :func:`_layout`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, var_logits, groups, eps):
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
                _threads(x),
            )
        )
        ctx.save_for_backward(x, weight, stats, set_weight)
        ctx.groups = groups
        ctx.logits_dtype = None if var_logits is None else var_logits.dtype
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _):
        x, weight, stats, set_weight = ctx.saved_tensors
        groups = ctx.groups
        n, c = x.shape[:2]
        grad_y = grad_y.contiguous()  # held: the kernel reads its memory
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_weight, grad_bias = x.new_empty(2, c)
        grad_set_weight = set_weight.new_empty(len(groups)) if ctx.needs_input_grad[3] else None
        mean, _, set_mean, set_var, invstd = _stat_pointers(stats, c, groups)
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
        return grad_x, grad_weight if affine else None, grad_bias if affine else None, grad_logits, None, None


_BN = PixelSet(True, None)
_ONE = torch.ones(1, dtype=torch.float64)


def _layout(channels: int, groups: tuple[int, ...]) -> list[int]:
    """Lengths of the parts of the statistics vector: channel means, channel variances (biased), the means
    and variances of every std set's groups, and the inverse std of each channel."""
    return [channels, channels, sum(groups), sum(groups), channels]


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
