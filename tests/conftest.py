"""Shared fixtures."""

from pathlib import Path

import numpy as np
import pytest

from fedhn.app.config import load_app_defaults

PROJECT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when selected by marker (``-m soak``, what ``make soak`` does)."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run it with make soak (pytest -m soak -s)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def defaults() -> dict:
    """The run-config defaults of the project's pyproject.toml."""
    return load_app_defaults(PROJECT)


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A 4-class, 3-channel, 8x8 dataset in the .npz format of ../shared/data."""
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 4
    images = (rng.uniform(0, 60, size=(120, 8, 8, 3)) + labels[:, None, None, None] * 60).astype(np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=images[:96], y_train=labels[:96], x_test=images[96:], y_test=labels[96:])
    return path
