"""Which attention calls vidgen's kernels serve, and saying (once) when a call goes elsewhere.

A processor asks :func:`frame_attention_gap` / :func:`temporal_attention_gap` before it calls
an op: ``None`` means the op serves the call; otherwise the answer is the reason it does not
(a head dim outside the kernels' range, a dtype they do not take), and the processor computes
the same attention in eager PyTorch instead, the way xformers' dispatch ends in PyTorch's own
attention. Asking costs two host integers and a dtype comparison: no device synchronisation.
"""
from __future__ import annotations

import threading
import warnings

import torch

from .kernels import frame_attention as _frame_kernels
from .kernels import temporal_attention as _temporal_kernels

# What the public ops accept (vidgen.ops.frame_attention / temporal_attention check the same).
_FRAME_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp64: the op's reference
_TEMPORAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelFallbackWarning(UserWarning):
    """A vidgen processor computed an attention in eager PyTorch because no kernel serves its shape."""


def frame_attention_gap(head_dim: int, dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`vidgen.ops.frame_attention` cannot run heads of ``head_dim`` (and ``dtype``), or None."""
    low, high = _frame_kernels.MIN_HEAD_DIM, _frame_kernels.MAX_HEAD_DIM
    if not low <= head_dim <= high:
        return f"head dim {head_dim} is outside the frame-attention kernels' range [{low}, {high}]"
    if dtype is not None and dtype not in _FRAME_DTYPES:
        return f"frame attention takes fp16, bf16, fp32 or fp64, not {dtype}"
    return None


def temporal_attention_gap(head_dim: int, dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`vidgen.ops.temporal_attention` cannot run heads of ``head_dim`` (and ``dtype``), or None."""
    high = _temporal_kernels.MAX_HEAD_DIM
    if not 1 <= head_dim <= high:
        return f"head dim {head_dim} is outside the temporal-attention kernels' range [1, {high}]"
    if dtype is not None and dtype not in _TEMPORAL_DTYPES:
        return f"temporal attention takes fp16, bf16 or fp32, not {dtype}"
    return None


_said: set[tuple[str, str]] = set()
_said_lock = threading.Lock()


def warn_once(what: str, reason: str, instead: str) -> None:
    """Warn that ``what`` ran ``instead`` of vidgen's kernel because ``reason``, once per process
    for each (what, reason): a UNet makes the same call in every layer and every step."""
    with _said_lock:
        if (what, reason) in _said:
            return
        _said.add((what, reason))
    warnings.warn(f"vidgen: {what} runs {instead}: {reason}. The result is the same; only this "
                  "call is not accelerated (said once per process).", KernelFallbackWarning, stacklevel=3)


def forget_warnings() -> None:
    """Let every fallback warn again (tests use it to see each warning)."""
    with _said_lock:
        _said.clear()


def head_dim_of(attn) -> int:
    """The head dim of a diffusers ``Attention`` module, from its configuration (no forward needed)."""
    return attn.inner_dim // attn.heads
