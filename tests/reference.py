"""Direct NumPy implementations of the paper's equations, independent of fedhn's code paths."""

from __future__ import annotations

import numpy as np


def set_stats(x: np.ndarray, over_batch: bool, groups: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of each pixel of ``x`` (N, C, S) over its set, broadcast to (N|1, C, 1)."""
    n, c, s = x.shape
    g = groups or c
    cells = x.reshape(n, g, (c // g) * s)
    axes = (0, 2) if over_batch else (2,)
    mean = cells.mean(axis=axes, keepdims=True)
    var = cells.var(axis=axes, keepdims=True)
    return np.repeat(mean, c // g, axis=1), np.repeat(var, c // g, axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def heterologous_norm(
    x: np.ndarray,
    mean_sets: list[tuple[bool, int | None]],
    std_sets: list[tuple[bool, int | None]],
    eps: float = 1e-5,
    mean_logits: np.ndarray | None = None,
    var_logits: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Eq. (1)-(2) in training mode for input (N, C, *spatial), sets given as (over_batch, groups)."""
    shape = x.shape
    x3 = x.reshape(shape[0], shape[1], -1).astype(np.float64)
    mean_weights = softmax(mean_logits) if mean_logits is not None else np.ones(1)
    var_weights = softmax(var_logits) if var_logits is not None else np.ones(1)
    mean = sum(w * set_stats(x3, *s)[0] for w, s in zip(mean_weights, mean_sets, strict=True))
    var = sum(w * set_stats(x3, *s)[1] for w, s in zip(var_weights, std_sets, strict=True))
    y = (x3 - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight[None, :, None] + bias[None, :, None]
    return y.reshape(shape)
