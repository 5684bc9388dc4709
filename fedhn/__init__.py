"""fedhn: Heterologous Normalization and its family for federated learning on Flower."""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The installed fedhn's version; else, run from a FAB (as a deployment's SuperExecs run it,
    without installing it), the version in the app's pyproject.toml beside the package."""
    try:
        return version("fedhn")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if not pyproject.exists():  # a bare source tree (scripts/gpu-check.sh on a GPU machine)
            return "source"
        with open(pyproject, "rb") as file:
            return tomllib.load(file)["project"]["version"]


__version__ = _version()
