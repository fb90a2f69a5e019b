"""Public temporal attention op: :func:`temporal_attention` (METHODS.md section 2), forward and backward.

Layout: the custom ops ``vidgen::temporal_attention_fwd`` / ``_bwd`` (the Triton kernels or the
PyTorch reference), the public function, and what a caller needs to decide whether the op serves
a call (:func:`temporal_attention_unsupported_reason`, and the reference to compute it otherwise),
so the diffusers integration never imports ``vidgen.kernels``.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from ..kernels import temporal_attention as _kernels
from ..kernels.temporal_attention import temporal_attention_reference

__all__ = ["temporal_attention", "temporal_attention_reference", "temporal_attention_unsupported_reason"]

TEMPORAL_ATTENTION = _backend.declare("temporal_attention", ("triton", "torch"), differentiable=True)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile and safe under CUDA-graph capture (no host sync). ``lse`` is
# the forward's natural-log log-sum-exp per query, (B, N, H, F) fp32, saved for the backward.
# ----------------------------------------------------------------------------------------------
def _temporal_attention_forward_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse); out in the layout of ``torch.empty_like(q)``."""
    if _backend.select(TEMPORAL_ATTENTION, q.device) == "triton":
        return _kernels.temporal_attention_forward_triton(q, k, v, scale)
    out, lse = temporal_attention_reference(q, k, v, scale)
    return _like(q, out), lse


# The public function calls the implementation itself where the registration would only cost
# time (eager inference: see ``_backend.direct_call_ok``).
_temporal_attention_forward = torch.library.custom_op("vidgen::temporal_attention_fwd",
                                                      _temporal_attention_forward_impl, mutates_args=())


@_temporal_attention_forward.register_fake
def _temporal_attention_forward_fake(q, k, v, scale):
    B, F, N, H, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, N, H, F), dtype=torch.float32)


@torch.library.custom_op("vidgen::temporal_attention_bwd", mutates_args=())
def _temporal_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor,
                                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each in the layout of ``torch.empty_like`` of its input."""
    if _backend.select(TEMPORAL_ATTENTION, q.device) == "triton":
        return _kernels.temporal_attention_backward_triton(dout, q, k, v, out, lse, scale)
    dq, dk, dv = _kernels.temporal_attention_backward_reference(dout, q, k, v, lse, scale)
    return _like(q, dq), _like(k, dk), _like(v, dv)


@_temporal_attention_backward.register_fake
def _temporal_attention_backward_fake(dout, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _like(layout: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in the memory layout ``torch.empty_like(layout)`` has (what the Triton path returns)."""
    return torch.empty_like(layout).copy_(values)


def _temporal_attention_setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _temporal_attention_autograd_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _temporal_attention_backward(dout, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_temporal_attention_forward.register_autograd(_temporal_attention_autograd_backward,
                                              setup_context=_temporal_attention_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, scale) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor(name, t, dtypes=_DTYPES)
        if t.dim() != 5:
            raise ValueError(f"{name}: expected a 5-D (B, F, N, H, D) tensor (frames on dim 1), got shape "
                             f"{tuple(t.shape)}; view an image-layout (B*F, N, H*D) tensor as "
                             f"t.view(B, F, N, H, D)")
    _checks.same_device(q=q, k=k, v=v)
    _checks.same_dtype(q=q, k=k, v=v)
    _checks.same_shape("q", q, k=k, v=v)
    B, F, N, H, D = q.shape
    if q.numel() == 0:
        raise ValueError(f"q: expected non-empty (B, F, N, H, D), got {tuple(q.shape)}")
    if (reason := temporal_attention_unsupported_reason(D)) is not None:
        raise ValueError(f"q: head dim D={D} is not supported ({reason})")
    return D ** -0.5 if scale is None else _checks.scale("scale", scale)


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Self-attention over the frame axis, independently for every (video, token, head).

    ``out[b, f, n, h] = sum_g softmax_g(scale * q[b, f, n, h] . k[b, g, n, h]) v[b, g, n, h]``

    Args:
        q, k, v: (B, F, N, H, D) tensors of one dtype (fp16, bf16 or fp32) and device, with any
            strides. Both UNet layouts are free views: an image-layout projection ``x`` of shape
            (B*F, N, H*D) is ``x.view(B, F, N, H, D)``; a frame-major one (B*N, F, H*D) is
            ``x.view(B, N, F, H, D).transpose(1, 2)``. F may be anything from 1 up (one launch;
            frames beyond 64 are tiled, beyond 32 for fp32 with D > 128), B*N*H anything (1-D grid), D from 1 to 256.
        scale: softmax scale, ``D ** -0.5`` by default.

    Returns:
        (B, F, N, H, D) in the memory layout of ``q`` when ``q`` is dense (so viewing it back to
        the caller's layout is free), else contiguous. Differentiable in q, k and v: the
        backward rebuilds the probabilities from the saved log-sum-exp (no F x F matrix saved).

    Backends: Triton on CUDA (and on CPU under ``TRITON_INTERPRET=1``), else the PyTorch reference.
    """
    scale = _check_inputs(q, k, v, scale)
    if _backend.direct_call_ok(q, k, v):
        return _temporal_attention_forward_impl(q, k, v, scale)[0]
    out, _ = _temporal_attention_forward(q, k, v, scale)
    return out


# ----------------------------------------------------------------------------------------------
# Capabilities: what a caller (the diffusers processors) asks before it calls the op. Two host
# integers and a dtype comparison: no device synchronisation.
# ----------------------------------------------------------------------------------------------
def temporal_attention_unsupported_reason(head_dim: int, dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`temporal_attention` cannot run heads of ``head_dim`` (and ``dtype``), or None: the one
    place that decides which head dims the op serves (the range is the kernels' own constants)."""
    low, high = _kernels.MIN_HEAD_DIM, _kernels.MAX_HEAD_DIM
    if not low <= head_dim <= high:
        return f"head dim {head_dim} is outside the temporal-attention kernels' range [{low}, {high}]"
    if dtype is not None and dtype not in _DTYPES:
        return f"temporal attention takes fp16, bf16 or fp32, not {dtype}"
    return None
