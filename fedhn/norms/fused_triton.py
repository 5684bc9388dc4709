"""Triton kernels of the fused HeterologousNorm operators (:mod:`fedhn.norms.fused`), the CUDA implementation.

The same math as the C kernels of :mod:`fedhn.norms.fused_kernel` (mean set ``bn``, std sets pooled over the
batch, ``set_weight`` mixing them), on contiguous (N, C, S) inputs of float32, bfloat16 or float16, with every
statistic computed and returned in float32. Each direction is three launches and uses no atomics: every
reduction has a fixed order, so results are bitwise reproducible.

- partials: channel c's N*S values split into ``chunks`` consecutive pieces, one program per (channel, piece):
  the piece's mean and sum of squared deviations (forward) or its sums of dy and dy * (x - mean_c) (backward);
- groups, one launch per std set, one program per group: combines the partials of its channels (Chan's
  parallel formulas for the variance), writes the set's part of ``stats`` (or of the gradients) and adds its
  share to per-channel coefficients, which the last set turns into the affine map of the elementwise pass;
- elementwise: y = (x - mean_c) * scale_c + shift_c, dx = a_c * dy + b_c * (x - mean_c) + d_c.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors, which is how the
tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["DTYPES", "backward", "forward"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TARGET_PROGRAMS = 1024  # enough (channel, piece) programs to fill a large GPU
_MIN_PIECE = 512  # fewest values per piece worth a program
_MAX_PIECES = 64
_ELEMENTWISE_BLOCK = 1024
_CHANNEL_BLOCK = 64


@triton.jit
def _moment_partials(x_ptr, mean_ptr, m2_ptr, C, S, R, PIECE, PIECES, BLOCK: tl.constexpr):
    """Mean and sum of squared deviations of piece p of channel c (values p*PIECE .. of its R = N*S)."""
    c, p = tl.program_id(0), tl.program_id(1)
    start = p * PIECE
    end = tl.minimum(start + PIECE, R)
    base = x_ptr + c.to(tl.int64) * S
    total = tl.zeros([BLOCK], tl.float32)
    for i in range(start, end, BLOCK):
        offsets = (i + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offsets < end
        n = offsets // S
        total += tl.load(base + n * C * S + (offsets - n * S), mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(total, 0) / (end - start).to(tl.float32)
    squares = tl.zeros([BLOCK], tl.float32)
    for i in range(start, end, BLOCK):
        offsets = (i + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offsets < end
        n = offsets // S
        value = tl.load(base + n * C * S + (offsets - n * S), mask=mask, other=0.0).to(tl.float32)
        squares += tl.where(mask, (value - mean) * (value - mean), 0.0)
    tl.store(mean_ptr + c * PIECES + p, mean)
    tl.store(m2_ptr + c * PIECES + p, tl.sum(squares, 0))


@triton.jit
def _gradient_partials(
    dy_ptr, x_ptr, stats_ptr, sum_dy_ptr, sum_dy_xc_ptr, C, S, R, PIECE, PIECES, BLOCK: tl.constexpr
):
    """Sums of dy and of dy * (x - mean_c) over piece p of channel c (the channel means lead ``stats``)."""
    c, p = tl.program_id(0), tl.program_id(1)
    start = p * PIECE
    end = tl.minimum(start + PIECE, R)
    base = c.to(tl.int64) * S
    center = tl.load(stats_ptr + c)
    sum_dy = tl.zeros([BLOCK], tl.float32)
    sum_dy_xc = tl.zeros([BLOCK], tl.float32)
    for i in range(start, end, BLOCK):
        offsets = (i + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offsets < end
        n = offsets // S
        where = base + n * C * S + (offsets - n * S)
        dy = tl.load(dy_ptr + where, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32)
        sum_dy += dy
        sum_dy_xc += dy * (x - center)
    tl.store(sum_dy_ptr + c * PIECES + p, tl.sum(sum_dy, 0))
    tl.store(sum_dy_xc_ptr + c * PIECES + p, tl.sum(sum_dy_xc, 0))


@triton.jit
def _channel_moments(mean_ptr, m2_ptr, channels, R, PIECE, PIECES, BLOCK_P: tl.constexpr):
    """Mean and biased variance of ``channels`` (a block of channel indices) from their pieces' partials."""
    pieces = tl.arange(0, BLOCK_P)
    valid = (channels[:, None] >= 0) & (pieces[None, :] < PIECES)
    where = channels[:, None] * PIECES + pieces[None, :]
    count = tl.minimum(PIECE, R - pieces * PIECE).to(tl.float32)[None, :]
    piece_mean = tl.load(mean_ptr + where, mask=valid, other=0.0)
    mean = tl.sum(tl.where(valid, piece_mean * count, 0.0), 1) / R
    deviation = piece_mean - mean[:, None]
    m2 = tl.sum(tl.where(valid, tl.load(m2_ptr + where, mask=valid, other=0.0) + count * deviation * deviation, 0.0), 1)
    return mean, m2 / R


@triton.jit
def _group_moments(mean_ptr, m2_ptr, first, R, PIECE, PIECES, PER_GROUP, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Mean and biased variance of the group of channels first .. first + PER_GROUP - 1, block by block
    (Chan's formulas combine the blocks)."""
    group_mean = 0.0
    group_m2 = 0.0
    for block in range(0, PER_GROUP, BLOCK_C):
        index = block + tl.arange(0, BLOCK_C)
        inside = index < PER_GROUP
        mean, var = _channel_moments(mean_ptr, m2_ptr, tl.where(inside, first + index, -1), R, PIECE, PIECES, BLOCK_P)
        size = tl.minimum(PER_GROUP - block, BLOCK_C).to(tl.float32)
        block_mean = tl.sum(tl.where(inside, mean, 0.0), 0) / size
        block_m2 = tl.sum(tl.where(inside, var + (mean - block_mean) * (mean - block_mean), 0.0), 0)
        seen = block * 1.0
        delta = block_mean - group_mean
        group_mean += delta * size / (seen + size)
        group_m2 += block_m2 + delta * delta * seen * size / (seen + size)
    group_var = group_m2 / PER_GROUP
    return group_mean, group_var


@triton.jit
def _group_forward(
    mean_ptr, m2_ptr, set_weight_ptr, weight_ptr, bias_ptr, stats_ptr, work_ptr,
    C, R, PIECE, PIECES, PER_GROUP, SET, OFFSET, G_TOTAL, eps,
    FIRST: tl.constexpr, LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Group g of std set SET: its mean and biased/unbiased variance into ``stats``, its weighted variance
    added to each of its channels' mixed variance (``work`` row 0); the last set writes each channel's mean
    and inverse std into ``stats`` and its scale and shift into ``work`` rows 1 and 2."""
    g = tl.program_id(0)
    first = g * PER_GROUP
    group_mean, group_var = _group_moments(mean_ptr, m2_ptr, first, R, PIECE, PIECES, PER_GROUP, BLOCK_C, BLOCK_P)
    count = (R * 1.0) * PER_GROUP
    tl.store(stats_ptr + C + OFFSET + g, group_mean)
    tl.store(stats_ptr + C + G_TOTAL + OFFSET + g, group_var)
    tl.store(stats_ptr + 2 * C + 2 * G_TOTAL + OFFSET + g, group_var * count / (count - 1.0))
    for block in range(0, PER_GROUP, BLOCK_C):
        index = block + tl.arange(0, BLOCK_C)
        inside = index < PER_GROUP
        channel = first + index
        mixed = tl.load(set_weight_ptr + SET * C + channel, mask=inside, other=0.0).to(tl.float32) * group_var
        if not FIRST:
            mixed += tl.load(work_ptr + channel, mask=inside, other=0.0)
        if LAST:
            mean, _ = _channel_moments(mean_ptr, m2_ptr, tl.where(inside, channel, -1), R, PIECE, PIECES, BLOCK_P)
            invstd = 1.0 / tl.sqrt(mixed + eps)
            scale = invstd
            shift = tl.zeros([BLOCK_C], tl.float32)
            if HAS_WEIGHT:
                scale *= tl.load(weight_ptr + channel, mask=inside, other=0.0).to(tl.float32)
            if HAS_BIAS:
                shift = tl.load(bias_ptr + channel, mask=inside, other=0.0).to(tl.float32)
            tl.store(stats_ptr + channel, mean, mask=inside)
            tl.store(stats_ptr + C + 2 * G_TOTAL + channel, invstd, mask=inside)
            tl.store(work_ptr + C + channel, scale, mask=inside)
            tl.store(work_ptr + 2 * C + channel, shift, mask=inside)
        else:
            tl.store(work_ptr + channel, mixed, mask=inside)


@triton.jit
def _channel_gradient(sum_dy_ptr, sum_dy_xc_ptr, stats_ptr, weight_ptr, channel, inside, C, G_TOTAL, PIECES,
                      HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """For a block of channels: sum(dy), sum(dy * (x - mean)), the inverse std, the weight and dL/dvar."""
    pieces = tl.arange(0, BLOCK_P)
    valid = inside[:, None] & (pieces[None, :] < PIECES)
    where = channel[:, None] * PIECES + pieces[None, :]
    sum_dy = tl.sum(tl.load(sum_dy_ptr + where, mask=valid, other=0.0), 1)
    sum_dy_xc = tl.sum(tl.load(sum_dy_xc_ptr + where, mask=valid, other=0.0), 1)
    invstd = tl.load(stats_ptr + C + 2 * G_TOTAL + channel, mask=inside, other=0.0)
    weight = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + channel, mask=inside, other=0.0).to(tl.float32)
    grad_var = -0.5 * weight * invstd * invstd * invstd * sum_dy_xc
    return sum_dy, sum_dy_xc, invstd, weight, grad_var


@triton.jit
def _group_backward(
    sum_dy_ptr, sum_dy_xc_ptr, stats_ptr, set_weight_ptr, weight_ptr, grad_weight_ptr, grad_bias_ptr,
    grad_set_weight_ptr, work_ptr, C, R, PIECES, PER_GROUP, SET, OFFSET, G_TOTAL,
    FIRST: tl.constexpr, LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Group g of std set SET: the gradient of its variance spread back to x through its channels' coefficients
    (``work`` rows 1 and 2: of x - mean_c and of 1), its channels' gradient of the set weights; the first set
    also writes grad_weight and grad_bias, the last the coefficient of dy (``work`` row 0)."""
    g = tl.program_id(0)
    first = g * PER_GROUP
    group_grad = 0.0
    for block in range(0, PER_GROUP, BLOCK_C):
        index = block + tl.arange(0, BLOCK_C)
        inside = index < PER_GROUP
        channel = tl.where(inside, first + index, 0)
        _, _, _, _, grad_var = _channel_gradient(
            sum_dy_ptr,
            sum_dy_xc_ptr,
            stats_ptr,
            weight_ptr,
            channel,
            inside,
            C,
            G_TOTAL,
            PIECES,
            HAS_WEIGHT,
            BLOCK_C,
            BLOCK_P,
        )
        set_weight = tl.load(set_weight_ptr + SET * C + channel, mask=inside, other=0.0).to(tl.float32)
        group_grad += tl.sum(tl.where(inside, set_weight * grad_var, 0.0), 0)
    slope = 2.0 * group_grad / ((R * 1.0) * PER_GROUP)
    set_mean = tl.load(stats_ptr + C + OFFSET + g)
    set_var = tl.load(stats_ptr + C + G_TOTAL + OFFSET + g)
    for block in range(0, PER_GROUP, BLOCK_C):
        index = block + tl.arange(0, BLOCK_C)
        inside = index < PER_GROUP
        channel = tl.where(inside, first + index, 0)
        sum_dy, sum_dy_xc, invstd, weight, grad_var = _channel_gradient(
            sum_dy_ptr,
            sum_dy_xc_ptr,
            stats_ptr,
            weight_ptr,
            channel,
            inside,
            C,
            G_TOTAL,
            PIECES,
            HAS_WEIGHT,
            BLOCK_C,
            BLOCK_P,
        )
        tl.store(grad_set_weight_ptr + SET * C + channel, (grad_var * set_var).to(tl.float64), mask=inside)
        x_coef = tl.full([BLOCK_C], 0.0, tl.float32) + slope
        offset_coef = slope * (tl.load(stats_ptr + channel, mask=inside, other=0.0) - set_mean)
        if FIRST:
            tl.store(grad_weight_ptr + channel, invstd * sum_dy_xc, mask=inside)
            tl.store(grad_bias_ptr + channel, sum_dy, mask=inside)
            offset_coef += -weight * invstd * sum_dy / (R * 1.0)
        else:
            x_coef += tl.load(work_ptr + C + channel, mask=inside, other=0.0)
            offset_coef += tl.load(work_ptr + 2 * C + channel, mask=inside, other=0.0)
        if LAST:
            tl.store(work_ptr + channel, weight * invstd, mask=inside)
        tl.store(work_ptr + C + channel, x_coef, mask=inside)
        tl.store(work_ptr + 2 * C + channel, offset_coef, mask=inside)


@triton.jit
def _normalize(x_ptr, y_ptr, stats_ptr, work_ptr, C, S, numel, BLOCK: tl.constexpr):
    """y = (x - mean_c) * scale_c + shift_c."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    channel = (offsets // S) % C
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(stats_ptr + channel, mask=mask, other=0.0)
    scale = tl.load(work_ptr + C + channel, mask=mask, other=0.0)
    shift = tl.load(work_ptr + 2 * C + channel, mask=mask, other=0.0)
    tl.store(y_ptr + offsets, ((x - mean) * scale + shift).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_input(dy_ptr, x_ptr, dx_ptr, stats_ptr, work_ptr, C, S, numel, BLOCK: tl.constexpr):
    """dx = a_c * dy + b_c * (x - mean_c) + d_c."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    channel = (offsets // S) % C
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(stats_ptr + channel, mask=mask, other=0.0)
    a = tl.load(work_ptr + channel, mask=mask, other=0.0)
    b = tl.load(work_ptr + C + channel, mask=mask, other=0.0)
    d = tl.load(work_ptr + 2 * C + channel, mask=mask, other=0.0)
    tl.store(dx_ptr + offsets, (a * dy + b * (x - mean) + d).to(dx_ptr.dtype.element_ty), mask=mask)


def _pieces(channels: int, per_channel: int) -> tuple[int, int]:
    """(values per piece, pieces per channel) for the partial reductions."""
    pieces = max(1, min(_MAX_PIECES, triton.cdiv(_TARGET_PROGRAMS, channels), triton.cdiv(per_channel, _MIN_PIECE)))
    piece = triton.cdiv(per_channel, pieces)
    return piece, triton.cdiv(per_channel, piece)


def _launch_sizes(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """N, C, S, the values per channel R, the piece length and the piece count."""
    n, c = x.shape[:2]
    s = x.numel() // (n * c)
    piece, pieces = _pieces(c, n * s)
    return n, c, s, n * s, piece, pieces


def _on_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Launch on x's GPU (triton launches on the current device); CPU tensors (the interpreter) need nothing."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _block(length: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(length)))


def forward(
    x: Tensor,
    y: Tensor,
    groups: Sequence[int],
    set_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    stats: Tensor,
) -> None:
    """Write y and the float32 statistics vector ``stats`` (laid out as :func:`fedhn.norms.fused.stat_sizes`)."""
    with _on_device(x):
        _launch_forward(x, y, groups, set_weight, weight, bias, eps, stats)


def _launch_forward(x, y, groups, set_weight, weight, bias, eps, stats) -> None:
    _, c, s, r, piece, pieces = _launch_sizes(x)
    mean, m2 = torch.empty(2, c * pieces, dtype=torch.float32, device=x.device)
    work = torch.empty(3 * c, dtype=torch.float32, device=x.device)
    _moment_partials[(c, pieces)](x, mean, m2, c, s, r, piece, pieces, BLOCK=_block(piece))
    for k, offset, group_count in _sets(groups):
        _group_forward[(group_count,)](
            mean, m2, set_weight, _or(weight, x), _or(bias, x), stats, work,
            c, r, piece, pieces, c // group_count, k, offset, sum(groups), eps,
            FIRST=k == 0, LAST=k == len(groups) - 1, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            BLOCK_C=_channel_block(c // group_count), BLOCK_P=triton.next_power_of_2(pieces),
        )  # fmt: skip
    numel = x.numel()
    _normalize[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](x, y, stats, work, c, s, numel, BLOCK=_ELEMENTWISE_BLOCK)


def backward(
    dy: Tensor,
    x: Tensor,
    dx: Tensor,
    groups: Sequence[int],
    set_weight: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    grad_weight: Tensor,
    grad_bias: Tensor,
    grad_set_weight: Tensor,
) -> None:
    """Write dx (x's dtype) and the float32 grad_weight, grad_bias and float64 grad_set_weight."""
    with _on_device(x):
        _launch_backward(dy, x, dx, groups, set_weight, weight, stats, grad_weight, grad_bias, grad_set_weight)


def _launch_backward(dy, x, dx, groups, set_weight, weight, stats, grad_weight, grad_bias, grad_set_weight) -> None:
    _, c, s, r, piece, pieces = _launch_sizes(x)
    sum_dy, sum_dy_xc = torch.empty(2, c * pieces, dtype=torch.float32, device=x.device)
    work = torch.empty(3 * c, dtype=torch.float32, device=x.device)
    _gradient_partials[(c, pieces)](dy, x, stats, sum_dy, sum_dy_xc, c, s, r, piece, pieces, BLOCK=_block(piece))
    for k, offset, group_count in _sets(groups):
        _group_backward[(group_count,)](
            sum_dy, sum_dy_xc, stats, set_weight, _or(weight, x), grad_weight, grad_bias, grad_set_weight,
            work, c, r, pieces, c // group_count, k, offset, sum(groups),
            FIRST=k == 0, LAST=k == len(groups) - 1, HAS_WEIGHT=weight is not None,
            BLOCK_C=_channel_block(c // group_count), BLOCK_P=triton.next_power_of_2(pieces),
        )  # fmt: skip
    numel = x.numel()
    _grad_input[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
        dy, x, dx, stats, work, c, s, numel, BLOCK=_ELEMENTWISE_BLOCK
    )


def _or(tensor: Tensor | None, placeholder: Tensor) -> Tensor:
    """``tensor``, or a pointer the kernel never reads (its HAS_ flag is off)."""
    return placeholder if tensor is None else tensor


def _channel_block(per_group: int) -> int:
    return min(_CHANNEL_BLOCK, triton.next_power_of_2(per_group))


def _sets(groups: Sequence[int]) -> list[tuple[int, int, int]]:
    """(set index, offset of its groups in the statistics, its group count) of every std set."""
    offsets = [sum(groups[:k]) for k in range(len(groups))]
    return list(zip(range(len(groups)), offsets, groups, strict=True))
