"""Soft loading of the compiled CUDA library (``libvidgen_cuda``, built from ``csrc/`` by CMake).

The library has a small C ABI and no link to libtorch, so one build serves every PyTorch
version. It is loaded lazily on first use; if it is missing or fails to load, vidgen warns
once, ``vidgen info`` reports why, and the ops run their Triton implementation instead.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import warnings

_ENV_PATH = "VIDGEN_CUDA_LIBRARY"


def candidate_paths() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    explicit = os.environ.get(_ENV_PATH)
    if explicit:
        return [explicit]
    return sorted(glob.glob(os.path.join(here, "_lib", "libvidgen_cuda*.so")))


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    paths = candidate_paths()
    if not paths:
        return None, ("not built: no libvidgen_cuda*.so in vidgen/_lib (built by setup.py when nvcc "
                      "is present; VIDGEN_SKIP_CUDA_BUILD=1 skips it)")
    from ._cuda_abi import declare_signatures

    try:
        lib = ctypes.CDLL(paths[0])
        declare_signatures(lib)
    except (OSError, AttributeError) as exc:
        return None, f"failed to load {paths[0]}: {exc}"
    return lib, None


def library() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError with the reason when it is unavailable."""
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"vidgen CUDA library unavailable: {reason}")
    return lib


def load_error() -> str | None:
    """None when the library is loaded, else why it is not (warns once)."""
    lib, reason = _load()
    if lib is None:
        _warn_once(reason)
    return reason


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    warnings.warn(f"vidgen: CUDA library not used ({reason}); falling back to Triton", stacklevel=3)


def path() -> str | None:
    lib, _ = _load()
    return getattr(lib, "_name", None)


def check(status: int, what: str) -> None:
    """Turn a non-zero status from the C ABI into a Python error with the library's message."""
    if status != 0:
        message = library().vidgen_last_error().decode(errors="replace")
        raise RuntimeError(f"vidgen CUDA library: {what} failed: {message}")
