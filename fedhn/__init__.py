"""fedhn: Heterologous Normalization and its family for federated learning on Flower."""

from importlib.metadata import version

__version__ = version("fedhn")
