"""fedhn: Heterologous Normalization and its family for federated learning on Flower."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedhn")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed (scripts/gpu-check.sh on a bare GPU machine)
    __version__ = "source"
