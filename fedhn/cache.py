"""The user's cache directory for what fedhn builds once (compiled kernels, decoded image folders)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedhn``, default ``~/.cache/fedhn``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedhn"
