"""Fused CPU training path for HeterologousNorm with the mean set ``bn`` and std sets pooled over the batch.

Covers ``hn``, ``hn_g<G>`` and softmax mixtures of batch std sets such as ``mean=bn,std=bn+en``, as three
``torch.library`` operators around the C kernels of :mod:`fedhn.norms.fused_kernel` (built by
:mod:`fedhn.norms.kernel_build`):

- ``hn_norm``: the normalization, functional; returns y and the batch statistics ``stats`` (laid out as
  :func:`stat_sizes` says); differentiable in ``x``, ``weight``, ``bias`` and ``set_weight`` through
- ``hn_norm_backward`` (once differentiable: no double backward);
- ``hn_update_running``: moves the running statistics towards ``stats``, in place (a C loop: a third of the
  cost of ``torch._foreach_lerp_`` on the three stat slices at small shapes).

Their schemas are in :data:`SCHEMAS`. Each checks every tensor argument (ValueError naming it) and has a fake
(meta) implementation, so ``torch.compile`` keeps them in its graph, and a vmap rule, so ``torch.func.vmap`` (and
``vmap(grad(...))``) over K packed clients runs each as one kernel call: a batched input (K, N, C, ...) is the
input (N, K*C, ...) with K times the std groups. ``groups`` holds each std set's channel-group count,
``set_weight`` (S, C) float64 each set's weight per channel (a mixture's softmax). Eager layers on plain tensors
call the kernels without the dispatcher (see :func:`_direct`), which costs as much as the kernel at small shapes.

Kernels per device type (:data:`KERNELS`): on CPU the C kernels (float32, float64), on CUDA the Triton kernels of
:mod:`fedhn.norms.fused_triton` (float32, bfloat16, float16; imported at first use). ``stats``, weights, biases
and running statistics have the dtype :func:`stat_dtype` gives: the input's, float32 for half inputs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedhn.norms import kernel_build
from fedhn.norms.pixel_sets import PixelSet

__all__ = ["KERNELS", "SCHEMAS", "DeviceKernels", "accepts", "fused_norm", "stat_dtype", "stat_sizes", "update_running"]

# Below this many elements one thread is faster than waking the OpenMP team.
_PARALLEL_MIN_ELEMENTS = 32768


SCHEMAS = {
    "hn_norm": "hn_norm(Tensor x, SymInt[] groups, Tensor? weight, Tensor? bias, Tensor set_weight, float eps) "
    "-> (Tensor y, Tensor stats)",
    "hn_norm_backward": "hn_norm_backward(Tensor grad_y, Tensor x, SymInt[] groups, Tensor? weight, "
    "Tensor set_weight, Tensor stats) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_set_weight)",
    "hn_update_running": "hn_update_running(Tensor(a!) running_mean, Tensor(b!) running_var, "
    "Tensor(c!)? running_center, Tensor stats, SymInt[] groups, float factor) -> ()",
}
_LIBRARY = torch.library.Library("fedhn", "DEF")
for _schema in SCHEMAS.values():
    # The kernels read raw memory: inductor must pass the inputs with the (contiguous) strides seen in tracing.
    _LIBRARY.define(_schema, tags=(torch.Tag.needs_exact_strides,))


def stat_sizes(channels: int, groups: Sequence[int]) -> list[int]:
    """Lengths of the parts of ``stats``: the channel means, each std group's mean and biased variance
    (the sets' groups in set order), each channel's inverse std, each std group's unbiased variance."""
    total = sum(groups)
    return [channels, total, total, channels, total]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics, weights and running statistics for inputs of ``dtype``."""
    return torch.float32 if dtype in _HALF else dtype


def accepts(x: Tensor, weight: Tensor | None, running_mean: Tensor | None) -> bool:
    """Whether :func:`fused_norm` can run on ``x`` (with the layer's ``weight`` and ``running_mean``) here: a
    tensor of a dtype its device's kernels take, in any memory layout (copied to NCHW), the others of
    :func:`stat_dtype`, and kernels that load (a C compiler on CPU, triton on CUDA)."""
    kernels = KERNELS.get(x.device.type)
    return (
        kernels is not None
        and x.dtype in kernels.dtypes
        and all(t is None or t.dtype == stat_dtype(x.dtype) for t in (weight, running_mean))
        and _kernel_available(x.device.type, x.dtype)
    )


def fused_norm(
    x: Tensor,
    std_sets: tuple[PixelSet, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    var_logits: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Training-mode normalization of ``x`` with the per-channel mean (``bn``) and the std of ``std_sets``
    (resolved batch sets, softmax-weighted by ``var_logits`` when several); returns y and the batch ``stats``."""
    channels, groups = x.shape[1], _groups(std_sets, x.shape[1])
    # Any layout: e.g. a convolution over 1-channel images returns channels_last, and the rest of such a
    # network is channels_last unless a layer returns NCHW. The copy makes y NCHW, so later layers are.
    if _direct(x):
        return _HnNorm.apply(x.contiguous(), groups, weight, bias, var_logits, eps)
    if var_logits is None:  # traced graphs make their own (dynamo does not trace through a cache)
        set_weight = torch.ones(len(std_sets), channels, dtype=torch.float64, device=x.device)
    else:
        set_weight = _mixture_weights(var_logits, channels)
    return _HnNormForTransforms.apply(x.contiguous(), groups, weight, bias, set_weight, eps)


def _mixture_weights(var_logits: Tensor, channels: int) -> Tensor:
    """The set weights (S, C) of a mixture: the softmax of its logits (S,), the same in every channel."""
    return torch.softmax(var_logits, 0, dtype=torch.float64)[:, None].expand(-1, channels).contiguous()


def update_running(
    stats: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    running_center: Tensor | None,
    std_sets: tuple[PixelSet, ...],
    factor: float,
) -> None:
    """Move the running statistics towards the batch ``stats`` by ``factor``, as ``HeterologousNorm`` stores
    them (unbiased variances)."""
    update = _hn_update_running if _direct(stats) else _UPDATE
    update(running_mean, running_var, running_center, stats, _groups(std_sets, running_mean.shape[-1]), factor)


def _groups(std_sets: tuple[PixelSet, ...], channels: int) -> list[int]:
    return [s.groups or channels for s in std_sets]


def _direct(tensor: Tensor) -> bool:
    """Whether the layers may call the operators' kernels (:data:`KERNELS`) directly, without the dispatcher's
    per-call cost (a third of BatchNorm's whole step at (2, 256, 8, 8)): for plain tensors, outside torch.compile,
    torch.func transforms and dispatch modes, where the dispatcher would pick the same kernels anyway."""
    return (
        type(tensor) is Tensor
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)
        and not torch._C._len_torch_dispatch_stack()
    )


@torch.compiler.assume_constant_result
def _kernel_available(device_type: str, dtype: torch.dtype) -> bool:
    return KERNELS[device_type].available(dtype)


# ---- argument checks (run by the kernels and, all but contiguity, by the fake implementations) ----


def _check(op: str, name: str, tensor: Tensor | None, like: Tensor, shape: Sequence[int], dtype: torch.dtype) -> None:
    """Raise ValueError unless ``tensor`` (None allowed) is a ``dtype`` tensor of ``shape`` on ``like``'s device."""
    if tensor is None:
        return
    if tensor.dtype != dtype or tensor.device != like.device or tensor.shape != shape:
        raise ValueError(
            f"fedhn::{op}: {name} must be a {dtype} tensor of shape {tuple(shape)} on {like.device}, got a "
            f"{tensor.dtype} tensor of shape {tuple(tensor.shape)} on {tensor.device}"
        )


def _check_contiguous(op: str, **tensors: Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and not tensor.is_contiguous():
            raise ValueError(f"fedhn::{op}: {name} must be contiguous; pass {name}.contiguous()")


def _check_input(op: str, x: Tensor, groups: Sequence[int], set_weight: Tensor) -> None:
    kernels = KERNELS.get(x.device.type)
    if kernels is None:
        raise ValueError(f"fedhn::{op}: no kernels for {x.device.type} tensors; use a device of {', '.join(KERNELS)}")
    if x.dim() < 2 or x.dtype not in kernels.dtypes:
        names = " or ".join(str(dtype).removeprefix("torch.") for dtype in kernels.dtypes)
        raise ValueError(
            f"fedhn::{op}: x must be a {names} {x.device.type.upper()} tensor of shape (N, C, ...), got a {x.dtype} "
            f"tensor of shape {tuple(x.shape)} on {x.device}"
        )
    channels = x.shape[1]
    if not groups or any(g < 1 or channels % g for g in groups):
        raise ValueError(
            f"fedhn::{op}: groups must list each std set's group count, each dividing the {channels} channels of x, "
            f"got {list(groups)}"
        )
    _check(op, "set_weight", set_weight, x, (len(groups), channels), torch.float64)


def _check_norm(x: Tensor, groups: Sequence[int], weight: Tensor | None, bias: Tensor | None, set_weight: Tensor):
    _check_input("hn_norm", x, groups, set_weight)
    for name, tensor in (("weight", weight), ("bias", bias)):
        _check("hn_norm", name, tensor, x, x.shape[1:2], stat_dtype(x.dtype))


def _check_backward(grad_y, x, groups, weight, set_weight, stats) -> None:
    op = "hn_norm_backward"
    _check_input(op, x, groups, set_weight)
    _check(op, "grad_y", grad_y, x, x.shape, x.dtype)
    _check(op, "weight", weight, x, x.shape[1:2], stat_dtype(x.dtype))
    _check(op, "stats", stats, x, (sum(stat_sizes(x.shape[1], groups)),), stat_dtype(x.dtype))


def _check_update(running_mean, running_var, running_center, stats, groups) -> None:
    op = "hn_update_running"
    if running_mean.dim() == 0 or running_mean.dtype not in kernel_build.SCALARS:
        raise ValueError(
            f"fedhn::{op}: running_mean must be a float32 or float64 tensor of shape (C,) (or (K, C) for K stacked "
            f"layers), got a {running_mean.dtype} tensor of shape {tuple(running_mean.shape)}"
        )
    *lead, channels = running_mean.shape
    if not groups or any(g < 1 or channels % g for g in groups):
        raise ValueError(f"fedhn::{op}: groups must divide the {channels} channels, got {list(groups)}")
    dtype, total = running_mean.dtype, sum(groups)
    _check(op, "running_var", running_var, running_mean, (*lead, total), dtype)
    _check(op, "running_center", running_center, running_mean, (*lead, total), dtype)
    _check(op, "stats", stats, running_mean, (*lead, sum(stat_sizes(channels, groups))), dtype)


# ---- implementations ----


def _hn_norm(x, groups, weight, bias, set_weight, eps):
    _check_contiguous("hn_norm", x=x, weight=weight, bias=bias, set_weight=set_weight)
    y, stats = _hn_norm_fake(x, groups, weight, bias, set_weight, eps)
    KERNELS[x.device.type].forward(x, y, groups, set_weight, weight, bias, eps, stats)
    return y, stats


def _hn_norm_fake(x, groups, weight, bias, set_weight, eps):
    _check_norm(x, groups, weight, bias, set_weight)
    return torch.empty_like(x), x.new_empty(sum(stat_sizes(x.shape[1], groups)), dtype=stat_dtype(x.dtype))


def _hn_norm_backward(grad_y, x, groups, weight, set_weight, stats):
    _check_contiguous("hn_norm_backward", grad_y=grad_y, x=x, weight=weight, set_weight=set_weight, stats=stats)
    gradients = _hn_norm_backward_fake(grad_y, x, groups, weight, set_weight, stats)
    KERNELS[x.device.type].backward(grad_y, x, gradients[0], groups, set_weight, weight, stats, *gradients[1:])
    return gradients


def _hn_norm_backward_fake(grad_y, x, groups, weight, set_weight, stats):
    _check_backward(grad_y, x, groups, weight, set_weight, stats)
    c, dtype = x.shape[1], stat_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(c, dtype=dtype), x.new_empty(c, dtype=dtype), torch.empty_like(set_weight)


def _hn_update_running(running_mean, running_var, running_center, stats, groups, factor):
    """Running statistics of one layer ((C,), (sum(groups),)) or of K layers stacked ((K, C), (K, sum(groups)))
    move towards ``stats`` ((L,) or (K, L)) by ``factor``."""
    _check_update(running_mean, running_var, running_center, stats, groups)
    _check_contiguous(
        "hn_update_running",
        running_mean=running_mean,
        running_var=running_var,
        running_center=running_center,
        stats=stats,
    )
    KERNELS[running_mean.device.type].update(running_mean, running_var, running_center, stats, sum(groups), factor)


def _hn_update_running_fake(running_mean, running_var, running_center, stats, groups, factor):
    _check_update(running_mean, running_var, running_center, stats, groups)


# ---- kernels per device type ----


@dataclass(frozen=True)
class DeviceKernels:
    """The kernels of one device type: ``forward(x, y, groups, set_weight, weight, bias, eps, stats)`` and
    ``backward(dy, x, dx, groups, set_weight, weight, stats, grad_weight, grad_bias, grad_set_weight)`` write
    into the preallocated outputs, ``update(running_mean, running_var, running_center, stats, total_groups,
    factor)`` moves running statistics in place; ``available(dtype)`` says whether they load here."""

    forward: Callable[..., None]
    backward: Callable[..., None]
    update: Callable[..., None]
    dtypes: tuple[torch.dtype, ...]
    available: Callable[[torch.dtype], bool]


def _c_forward(x, y, groups, set_weight, weight, bias, eps, stats) -> None:
    n, c = x.shape[:2]
    kernel_build.load(x.dtype).call(
        "fused_forward", x=x, y=y, n=n, c=c, s=x.numel() // (n * c), num_sets=len(groups),
        groups=_groups_array(tuple(groups)), set_weight=set_weight, weight=weight, bias=bias, eps=eps, stats=stats,
        threads=_threads(x),
    )  # fmt: skip


def _c_backward(dy, x, dx, groups, set_weight, weight, stats, grad_weight, grad_bias, grad_set_weight) -> None:
    n, c = x.shape[:2]
    kernel_build.load(x.dtype).call(
        "fused_backward", dy=dy, x=x, dx=dx, n=n, c=c, s=x.numel() // (n * c), num_sets=len(groups),
        groups=_groups_array(tuple(groups)), set_weight=set_weight, weight=weight, stats=stats,
        grad_weight=grad_weight, grad_bias=grad_bias, grad_set_weight=grad_set_weight, threads=_threads(x),
    )  # fmt: skip


def _c_update(running_mean, running_var, running_center, stats, total_groups, factor) -> None:
    channels = running_mean.shape[-1]
    kernel_build.load(running_mean.dtype).call(
        "update_running", running_mean=running_mean, running_var=running_var, running_center=running_center,
        stats=stats, rows=running_mean.numel() // channels, c=channels, g_total=total_groups, factor=factor,
    )  # fmt: skip


def _lerp_update(running_mean, running_var, running_center, stats, total_groups, factor) -> None:
    """:func:`_c_update`'s math as one ``torch._foreach_lerp_`` over the parts of ``stats`` (any device)."""
    channels = running_mean.shape[-1]
    running, batch = [running_mean, running_var], [stats[..., :channels], stats[..., -total_groups:]]
    if running_center is not None:
        running.append(running_center)
        batch.append(stats[..., channels : channels + total_groups])
    torch._foreach_lerp_(running, batch, factor)


@functools.cache
def _triton_kernels():
    from fedhn.norms import fused_triton  # imports triton (about a second): only once CUDA tensors arrive

    return fused_triton


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_forward(*arguments) -> None:
    _triton_kernels().forward(*arguments)


def _triton_backward(*arguments) -> None:
    _triton_kernels().backward(*arguments)


KERNELS: dict[str, DeviceKernels] = {
    "cpu": DeviceKernels(
        _c_forward,
        _c_backward,
        _c_update,
        tuple(kernel_build.SCALARS),
        lambda dtype: kernel_build.load(dtype) is not None,
    ),
    "cuda": DeviceKernels(
        _triton_forward,
        _triton_backward,
        _lerp_update,
        (torch.float32, torch.bfloat16, torch.float16),
        lambda _dtype: _triton_installed(),
    ),
}
"""The kernels of each device type the operators run on (the tests swap the CPU entry for the Triton kernels
under the interpreter)."""
_HALF = (torch.float16, torch.bfloat16)


# ---- autograd ----
#
# Two Functions share one backward: _HnNormForTransforms (setup_context, a generated vmap rule) works under
# torch.func transforms and torch.compile and is the operator's Autograd kernel; _HnNorm, for plain eager tensors,
# has the combined forward(ctx, ...), which Function.apply runs about 30 us faster (no argument binding, no
# functorch bookkeeping), and calls the CPU kernels directly.


def _save(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    x, groups, weight, bias, set_weight, _ = inputs
    _, stats = output
    ctx.save_for_backward(x, weight, set_weight, stats)
    ctx.groups = groups
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # no zeros for the gradient of stats


def _gradients(ctx, grad_y: Tensor | None, backward: Callable[..., tuple[Tensor, ...]]) -> tuple[Tensor | None, ...]:
    """The gradients of hn_norm's inputs, from ``backward`` (the operator or its CPU kernel)."""
    if grad_y is None:  # y took no part in the loss
        return (None,) * 6
    x, weight, set_weight, stats = ctx.saved_tensors
    # contiguous(): free in eager; torch.compile may lay activations out otherwise.
    grad_x, grad_weight, grad_bias, grad_set_weight = backward(
        grad_y.contiguous(), x.contiguous(), ctx.groups, weight, set_weight, stats
    )
    affine = weight is not None
    return grad_x, None, grad_weight if affine else None, grad_bias if ctx.has_bias else None, grad_set_weight, None


class _HnNorm(torch.autograd.Function):
    """``fedhn::hn_norm``'s kernels with their backward, for plain eager tensors; ``stats`` is not differentiable.
    It takes a mixture's logits (or None) instead of the set weights and differentiates their softmax itself:
    three autograd nodes fewer (softmax, expand, copy), which cost a mixture 0.15x BatchNorm at (4, 64, 32, 32)."""

    @staticmethod
    def forward(ctx, x, groups, weight, bias, var_logits, eps):
        if var_logits is None:
            set_weight = _unit_set_weight(len(groups), x.shape[1], torch.float64)
        else:
            set_weight = _mixture_weights(var_logits.detach(), x.shape[1])
        inputs = (x, groups, weight, bias, set_weight, eps)
        output = _hn_norm(*inputs)
        _save(ctx, inputs, output)
        ctx.logits_dtype = None if var_logits is None else var_logits.dtype
        return output

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, _grad_stats: None) -> tuple[Tensor | None, ...]:
        *grads, grad_set_weight, grad_eps = _gradients(ctx, grad_y, _hn_norm_backward)
        grad_logits = None
        if ctx.logits_dtype is not None and grad_set_weight is not None and ctx.needs_input_grad[4]:
            weights = ctx.saved_tensors[2][:, 0]  # the softmax, (S,)
            weighted = weights * grad_set_weight.sum(1)  # d loss / d softmax, through every channel
            grad_logits = (weighted - weights * weighted.sum()).to(ctx.logits_dtype)  # softmax's backward
        return *grads, grad_logits, grad_eps


class _HnNormForTransforms(torch.autograd.Function):
    """``fedhn::hn_norm`` with its backward operator, for torch.func transforms and torch.compile."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs):  # (x, groups, weight, bias, set_weight, eps); *inputs binds fastest in Function.apply
        x, *rest = inputs
        return _NORM(x.contiguous(), *rest)

    setup_context = staticmethod(_save)

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, _grad_stats: None) -> tuple[Tensor | None, ...]:
        return _gradients(ctx, grad_y, _BACKWARD)


# Function.apply binds its arguments to forward's signature on every call: computed once, the binding is cheap.
_HnNormForTransforms.forward.__signature__ = inspect.signature(_HnNormForTransforms.forward)


def _hn_norm_autograd(x, groups, weight, bias, set_weight, eps):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, set_weight)):
        return _HnNormForTransforms.apply(x, groups, weight, bias, set_weight, eps)
    with torch._C._AutoDispatchBelowAutograd():
        return _NORM(x, groups, weight, bias, set_weight, eps)


# ---- vmap rules: K members (K, N, C, ...) run as one input (N, K*C, ...) with K times the std groups ----


def _members(tensor: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """``tensor`` with its batch dimension first (expanded when it has none)."""
    if tensor is None:
        return None
    return tensor.expand(size, *tensor.shape) if dim is None else tensor.movedim(dim, 0)


def _pack(tensor: Tensor, dim: int | None, size: int) -> Tensor:
    """(K, N, C, ...) members -> one contiguous (N, K*C, ...) input."""
    tensor = _members(tensor, dim, size)
    return tensor.transpose(0, 1).reshape(tensor.shape[1], -1, *tensor.shape[3:])


def _pack_channels(tensor: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """(K, ..., C) per-member channel vectors -> contiguous (..., K*C): weights, set weights."""
    tensor = _members(tensor, dim, size)
    return None if tensor is None else tensor.movedim(0, -2).reshape(*tensor.shape[1:-1], -1)


_CHANNEL_PARTS = (0, 3)  # the parts of stats (see stat_sizes) with one entry per channel; the others per group


def _pack_stats(stats: Tensor, dim: int | None, size: int, channels: int, groups: Sequence[int]) -> Tensor:
    """(K, L) per-member statistics -> the statistics of the packed input, (K*L,)."""
    parts = _members(stats, dim, size).split(stat_sizes(channels, groups), dim=1)
    flat = []
    for i, part in enumerate(parts):
        sets = [part] if i in _CHANNEL_PARTS else part.split(list(groups), dim=1)
        flat += [member_major.reshape(-1) for member_major in sets]
    return torch.cat(flat)


def _unpack_stats(stats: Tensor, size: int, channels: int, groups: Sequence[int]) -> Tensor:
    """The statistics of the packed input, (K*L,) -> (K, L) per-member statistics."""
    packed_groups = [size * g for g in groups]
    members = []
    for i, part in enumerate(stats.split(stat_sizes(size * channels, packed_groups))):
        sets = [part] if i in _CHANNEL_PARTS else part.split(packed_groups)
        members += [set_major.view(size, -1) for set_major in sets]
    return torch.cat(members, dim=1)


def _hn_norm_vmap(info, in_dims, x, groups, weight, bias, set_weight, eps):
    k = info.batch_size
    x_dim, _, weight_dim, bias_dim, set_weight_dim, _ = in_dims
    packed = _pack(x, x_dim, k)
    y, stats = _NORM(
        packed,
        [k * g for g in groups],
        _pack_channels(weight, weight_dim, k),
        _pack_channels(bias, bias_dim, k),
        _pack_channels(set_weight, set_weight_dim, k),
        eps,
    )
    n, c = packed.shape[0], packed.shape[1] // k
    return (y.view(n, k, c, *y.shape[2:]), _unpack_stats(stats, k, c, groups)), (1, 0)


def _hn_norm_backward_vmap(info, in_dims, grad_y, x, groups, weight, set_weight, stats):
    k = info.batch_size
    grad_y_dim, x_dim, _, weight_dim, set_weight_dim, stats_dim = in_dims
    packed = _pack(x, x_dim, k)
    n, c = packed.shape[0], packed.shape[1] // k
    grad_x, grad_weight, grad_bias, grad_set_weight = _BACKWARD(
        _pack(grad_y, grad_y_dim, k),
        packed,
        [k * g for g in groups],
        _pack_channels(weight, weight_dim, k),
        _pack_channels(set_weight, set_weight_dim, k),
        _pack_stats(stats, stats_dim, k, c, groups),
    )
    outputs = (
        grad_x.view(n, k, c, *grad_x.shape[2:]),
        grad_weight.view(k, c),
        grad_bias.view(k, c),
        grad_set_weight.view(len(groups), k, c),
    )
    return outputs, (1, 0, 0, 1)


def _hn_update_running_vmap(info, in_dims, running_mean, running_var, running_center, stats, groups, factor):
    if None in in_dims[:2] or (running_center is not None and in_dims[2] is None):
        raise ValueError(
            "fedhn::hn_update_running under vmap: the running statistics must be batched like the input (one set "
            "per member, e.g. stacked with torch.func.stack_module_state), not shared by the members"
        )
    k = info.batch_size
    running = [_members(t, d, k) for t, d in zip((running_mean, running_var, running_center), in_dims, strict=False)]
    _UPDATE(*running, _members(stats, in_dims[3], k), groups, factor)
    return None, None


_NAME = "fedhn::{}"
for _op, (_impl, _fake, _vmap) in {
    "hn_norm": (_hn_norm, _hn_norm_fake, _hn_norm_vmap),
    "hn_norm_backward": (_hn_norm_backward, _hn_norm_backward_fake, _hn_norm_backward_vmap),
    "hn_update_running": (_hn_update_running, _hn_update_running_fake, _hn_update_running_vmap),
}.items():
    for _key in ("CPU", "CUDA"):
        _LIBRARY.impl(_op, _impl, _key)
    torch.library.register_fake(_NAME.format(_op), _fake, lib=_LIBRARY)
    torch.library.register_vmap(_NAME.format(_op), _vmap, lib=_LIBRARY)
_LIBRARY.impl("hn_norm", _hn_norm_autograd, "Autograd")

_NORM = torch.ops.fedhn.hn_norm.default
_BACKWARD = torch.ops.fedhn.hn_norm_backward.default
_UPDATE = torch.ops.fedhn.hn_update_running.default


@functools.cache
def _unit_set_weight(num_sets: int, channels: int, dtype: torch.dtype) -> Tensor:
    """The set weights of a layer without a mixture (read only: shared by every such layer)."""
    return torch.ones(num_sets, channels, dtype=dtype)


@functools.cache
def _groups_array(groups: tuple[int, ...]) -> ctypes.Array:
    return (ctypes.c_int64 * len(groups))(*groups)


def _threads(x: Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= _PARALLEL_MIN_ELEMENTS else 1
