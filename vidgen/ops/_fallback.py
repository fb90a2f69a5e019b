"""The one way vidgen says that a call ran a slower path than the one it was asked for.

A fallback computes the same result (an op's PyTorch reference, diffusers' own module, the
inputs' precision instead of FP8, Triton instead of the CUDA library) and warns once per process
for each (what, reason) with :class:`FallbackWarning`: a UNet makes the same call in every layer
of every step, and one line is what a user needs to see. The ops' own fallbacks and the
integration's (attention processors, motion modules, CUDA graphs) all warn here.
"""
from __future__ import annotations

import threading
import warnings

__all__ = ["FallbackWarning", "forget_warnings", "warn_once"]


class FallbackWarning(UserWarning):
    """vidgen ran a slower path with the same result (eager PyTorch, diffusers' module, another backend)."""


_said: set[tuple[str, str]] = set()
_said_lock = threading.Lock()


def warn_once(what: str, reason: str, instead: str) -> None:
    """Warn that ``what`` ran ``instead`` of vidgen's fast path because ``reason``, once per process
    for each (what, reason)."""
    with _said_lock:
        if (what, reason) in _said:
            return
        _said.add((what, reason))
    warnings.warn(f"vidgen: {what} runs {instead}: {reason}. The result is the same; only this "
                  "call is not accelerated (said once per process).", FallbackWarning, stacklevel=3)


def forget_warnings() -> None:
    """Let every fallback warn again (tests use it to see each warning)."""
    with _said_lock:
        _said.clear()
