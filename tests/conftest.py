"""Shared fixtures."""

from pathlib import Path

import numpy as np
import pytest

from fedhn.app.config import load_app_defaults

PROJECT = Path(__file__).resolve().parent.parent


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker",
        action="store_true",
        help="run the tests marked docker (build the app image, start containers; minutes): make test-docker",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked docker run only with --docker: they are not part of `make test` (nor CI)."""
    if config.getoption("--docker"):
        return
    skip = pytest.mark.skip(reason="a Docker engine test: run it with `make test-docker` (pytest --docker)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)
