"""Builds, caches and loads the C kernels of :mod:`fedhn.norms.fused_kernel`, and calls them by argument name.

The kernel is compiled with the system C compiler (``$CC``, else ``cc``) with OpenMP at first use and cached in
``$XDG_CACHE_HOME/fedhn`` (default ``~/.cache/fedhn``), one binary per source, compiler, flags and scalar type.
Without a compiler :func:`load` warns once and returns ``None`` (the layers keep their general path).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from fedhn.cache import user_cache_dir
from fedhn.norms.fused_kernel import SOURCE

__all__ = ["Kernel", "SCALARS", "load"]

SCALARS = {torch.float32: "float", torch.float64: "double"}
_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
# The C functions' parameters in order, as (name, ctypes type); tensors go to _P parameters as their data pointer.
_SIGNATURES: dict[str, tuple[tuple[str, type], ...]] = {
    "fused_forward": tuple(
        zip(
            "x y n c s num_sets groups set_weight weight bias eps stats threads".split(),
            (_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _D, _P, ctypes.c_int),
            strict=True,
        )
    ),
    "fused_backward": tuple(
        zip(
            "dy x dx n c s num_sets groups set_weight weight stats grad_weight grad_bias grad_set_weight threads".split(),
            (_P, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int),
            strict=True,
        )
    ),
    "update_running": tuple(
        zip(
            "running_mean running_var running_center stats rows c g_total factor".split(),
            (_P, _P, _P, _P, _I, _I, _I, _D),
            strict=True,
        )
    ),
}


class Kernel:
    """The compiled kernels for one scalar type; :meth:`call` passes arguments by the C parameter names."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._functions = {}
        for name, parameters in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes = [ctype for _, ctype in parameters]
            self._functions[name] = (function, tuple(parameter for parameter, _ in parameters))

    def call(self, name: str, **arguments: Tensor | ctypes.Array | int | float | None) -> None:
        """Call C function ``name`` with every parameter given by name (tensors as their data pointers).

        Raises:
            TypeError: a parameter is missing or unknown.
            MemoryError: the kernel could not allocate its workspace.
        """
        function, parameters = self._functions[name]
        try:
            values = [arguments[parameter] for parameter in parameters]
        except KeyError as missing:
            raise TypeError(f"{name}: missing parameter {missing}; it takes {', '.join(parameters)}") from None
        if len(arguments) != len(parameters):
            unknown = sorted(set(arguments) - set(parameters))
            raise TypeError(f"{name}: unknown parameters {', '.join(unknown)}; it takes {', '.join(parameters)}")
        if function(*[value.data_ptr() if isinstance(value, Tensor) else value for value in values]):
            raise MemoryError(f"{name}: the fused norm kernel could not allocate its per-channel workspace")


@functools.cache
def load(dtype: torch.dtype) -> Kernel | None:
    """The compiled kernels for ``dtype`` (float32 or float64), built once per source, compiler and flags, or
    ``None`` with a warning when they cannot be built."""
    scalar = SCALARS[dtype]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn(
            "fedhn: no C compiler found (set CC); heterologous norms use the slower general path", stacklevel=3
        )
        return None
    command = [compiler, *_FLAGS, f"-DSCALAR={scalar}"]
    key = hashlib.sha256((SOURCE + " ".join(command)).encode()).hexdigest()[:16]
    cache = user_cache_dir()
    path = cache / f"fused_norm_{scalar}_{key}.so"
    try:
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as build:
                source, built = Path(build) / "fused_kernel.c", Path(build) / path.name
                source.write_text(SOURCE)
                subprocess.run([*command, str(source), "-o", str(built), "-lm"], check=True, capture_output=True)
                os.replace(built, path)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = error.stderr.decode(errors="replace") if isinstance(error, subprocess.CalledProcessError) else error
        warnings.warn(
            f"fedhn: could not build the fused norm kernel ({detail}); heterologous norms use the slower general path",
            stacklevel=3,
        )
        return None
    return Kernel(library)
