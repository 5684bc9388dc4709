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


def filter_response_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, tau: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """FRN (eq. (1)-(2) of Singh and Krishnan) and its TLU for input (N, C, *spatial): returns
    ``(gamma * x / sqrt(nu2 + eps) + beta, max(that, tau))``, nu2 the mean of x^2 over the spatial positions
    of each sample and channel (x^2 itself for (N, C) input)."""
    shape = x.shape
    x3 = x.reshape(shape[0], shape[1], -1).astype(np.float64)
    nu2 = (x3**2).mean(axis=2, keepdims=True)
    y = x3 / np.sqrt(nu2 + eps) * weight[None, :, None] + bias[None, :, None]
    return y.reshape(shape), np.maximum(y, tau[None, :, None]).reshape(shape)


def batch_renorm(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    r_max: float,
    d_max: float,
    eps: float,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training step of Batch Renormalization (Ioffe 2017, Algorithm 1) for input (N, C, *spatial):
    the output, r, d, and the running mean and (unbiased) variance after the step."""
    shape = x.shape
    x3 = x.reshape(shape[0], shape[1], -1).astype(np.float64)
    count = x3.shape[0] * x3.shape[2]
    mean_b = x3.mean(axis=(0, 2))
    var_b = x3.var(axis=(0, 2))
    sigma_b = np.sqrt(var_b + eps)
    sigma = np.sqrt(running_var + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mean_b - running_mean) / sigma, -d_max, d_max)
    x_hat = (x3 - mean_b[None, :, None]) / sigma_b[None, :, None] * r[None, :, None] + d[None, :, None]
    y = x_hat * weight[None, :, None] + bias[None, :, None]
    new_mean = (1 - momentum) * running_mean + momentum * mean_b
    new_var = (1 - momentum) * running_var + momentum * var_b * count / (count - 1)
    return y.reshape(shape), r, d, new_mean, new_var
