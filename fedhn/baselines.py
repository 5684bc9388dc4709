"""The federated-learning baselines fedhn runs besides the norm presets: how to turn each on, the paper it
comes from and what it does to the normalization statistics (``fedhn norms`` prints them, the README's
*Baselines* table is :func:`markdown_table`'s output)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASELINES", "Baseline", "markdown_table"]


@dataclass(frozen=True)
class Baseline:
    """A method of the FL literature as fedhn's run-config keys."""

    name: str
    run_config: str
    paper: str
    statistics: str


BASELINES: tuple[Baseline, ...] = (
    Baseline(
        "FedBN",
        'stats-aggregation = "local"',
        "Li et al., FedBN: Federated Learning on Non-IID Features via Local Batch Normalization, ICLR 2021",
        "each client keeps its own norm layers (affine parameters and running statistics); the rest is averaged",
    ),
    Baseline(
        "FixBN",
        "freeze-stats-after = T",
        "Zhong et al., Making Batch Normalization Great in Federated Deep Learning",
        "any norm with running statistics (bn, en, hn, hn_g<G>, mean=bn,std=bn+en, sn's bn part; with hn it is "
        "FixHN): rounds 1..T as usual; from round T+1 the clients normalize with the aggregated global running "
        "statistics in training too and the statistics stay fixed (with calibrate-stats: calibrated once, after "
        "round T)",
    ),
    Baseline(
        "FedWon",
        'norm = "none", conv = "ws", agc-clip > 0',
        "Zhuang and Lyu, Is Normalization Indispensable for Multi-domain Federated Learning?, ICLR 2024",
        "no normalization and no statistics: scaled weight-standardized convolutions, SkipInit gains on the "
        "residual branches, adaptive gradient clipping (classifier not clipped); trains at batch size 1",
    ),
)


def markdown_table() -> str:
    """The baselines as the README's Markdown table."""
    rows = [f"| {b.name} | `{b.run_config}` | {b.paper} | {b.statistics} |" for b in BASELINES]
    return "\n".join(["| baseline | run config | paper | statistics |", "|---|---|---|---|", *rows])
