"""Where vidgen keeps what it computes once per machine: ``$VIDGEN_CACHE``, default ``~/.cache/vidgen``.

The autotuner's choices live in ``autotune/`` under it (``kernels/_autotune.py``) and the built-in
default models beside them (``vidgen/default_model.py``, which reaches this through ``vidgen.ops``).
"""
from __future__ import annotations

import os

CACHE_ENV = "VIDGEN_CACHE"


def cache_dir() -> str:
    """The cache folder, read from the environment at every call (tests point it elsewhere)."""
    return os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "vidgen"))
