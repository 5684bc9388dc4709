"""Shared fixtures and helpers."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from fedhn.app.config import load_app_defaults

PROJECT = Path(__file__).resolve().parent.parent


def crash(superlink) -> None:
    """Kill a :class:`fedhn.launch.superlink.LocalSuperLink`'s run as a crash would: SIGKILL to every process
    group it started (ServerApp, Ray) and to the SuperLink, at once."""
    for group in superlink.process_groups():
        os.killpg(group, signal.SIGKILL)
    superlink.process.kill()


def read_rounds(run_dir: Path) -> list[dict]:
    """A run's ``metrics.jsonl``: one dict a round, as written."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compare(out_dir: Path, norms: str, *options: str, app_dir: Path = PROJECT):
    """``fedhn compare --norms <norms> <options> --out <out_dir> --app <app_dir>`` in this process (typer's
    CliRunner); its Result (``exit_code``, ``output``)."""
    from typer.testing import CliRunner

    from fedhn.launch.cli import app

    return CliRunner().invoke(
        app, ["compare", "--norms", norms, *options, "--out", str(out_dir), "--app", str(app_dir)]
    )


@pytest.fixture
def task_identity():
    """Flower's task identity as a ClientApp sees it (messages and records built outside Flower need one)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


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


def write_image_folder(
    root: Path,
    domains: tuple[str, ...] = ("photo", "sketch"),
    classes: tuple[str, ...] = ("cat", "dog", "owl"),
    per_class: int = 6,
    seed: int = 0,
) -> Path:
    """A tiny image folder ``root/<domain>/<class>/<i>.png|jpg`` (``domains=()``: ``root/<class>/``):
    images of 12 x 9 pixels whose colour tells the class and whose brightness tells the domain,
    every third one a JPEG, every fifth one grayscale."""
    import torch
    from torchvision.io import write_jpeg, write_png

    generator = torch.Generator().manual_seed(seed)
    for d, domain in enumerate(domains or ("",)):
        for c, name in enumerate(classes):
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = torch.randint(0, 40, (3, 9, 12), generator=generator)
                image = (noise + 60 * d + torch.tensor([80 * c, 200 - 60 * c, 40]).view(3, 1, 1)).clamp(0, 255)
                image = image.to(torch.uint8)
                if i % 5 == 4:
                    image = image[:1]
                if i % 3 == 2:
                    write_jpeg(image, str(folder / f"{i}.jpg"), quality=95)
                else:
                    write_png(image, str(folder / f"{i}.png"))
    return root


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker",
        action="store_true",
        help="run the tests marked docker (build the app image, start containers; minutes): make test-docker",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked soak or slow run only when selected by marker (``-m soak``: ``make soak``; ``-m slow``:
    ``make test-slow``), tests marked docker only with ``--docker`` (``make test-docker``): none is part of
    ``make test`` (nor CI)."""
    skips = {}
    markexpr = config.getoption("markexpr") or ""
    if "soak" not in markexpr:
        skips["soak"] = pytest.mark.skip(reason="soak test: run it with make soak (pytest -m soak -s)")
    if "slow" not in markexpr:
        skips["slow"] = pytest.mark.skip(
            reason="a second end-to-end variant: run it with make test-slow (pytest -m slow)"
        )
    if not config.getoption("--docker"):
        skips["docker"] = pytest.mark.skip(
            reason="a Docker engine test: run it with `make test-docker` (pytest --docker)"
        )
    for item in items:
        for marker, skip in skips.items():
            if item.get_closest_marker(marker):
                item.add_marker(skip)
