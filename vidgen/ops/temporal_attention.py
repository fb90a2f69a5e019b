"""Public temporal attention op: :func:`temporal_attention` (METHODS.md section 2), forward and backward."""
from __future__ import annotations

import math

import torch

from .. import _backend, _checks
from ..kernels import temporal_attention as _kernels

TEMPORAL_ATTENTION = _backend.declare("temporal_attention", ("triton", "torch"), differentiable=True)


# Custom ops: opaque to torch.compile and safe under CUDA-graph capture (no host sync). ``lse`` is
# the forward's natural-log log-sum-exp per query, (B, N, H, F) fp32, saved for the backward.
@torch.library.custom_op("vidgen::temporal_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _backend.select(TEMPORAL_ATTENTION, q.device) == "triton":
        return _kernels.temporal_attention_fwd_triton(q, k, v, scale)
    out, lse = _kernels.temporal_attention_reference(q, k, v, scale)
    return _like(q, out), lse


@_fwd_op.register_fake
def _(q, k, v, scale):
    B, F, N, H, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, N, H, F), dtype=torch.float32)


@torch.library.custom_op("vidgen::temporal_attention_bwd", mutates_args=())
def _bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _backend.select(TEMPORAL_ATTENTION, q.device) == "triton":
        return _kernels.temporal_attention_bwd_triton(grad_out, q, k, v, out, lse, scale)
    dq, dk, dv = _kernels.temporal_attention_backward_reference(grad_out, q, k, v, lse, scale)
    return _like(q, dq), _like(k, dk), _like(v, dv)


@_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _like(layout: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in the memory layout ``torch.empty_like(layout)`` has (what the Triton path returns)."""
    return torch.empty_like(layout).copy_(values)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(q, k, v, scale) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor(name, t)
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
    if D > _kernels.MAX_HEAD_DIM:
        raise ValueError(f"q: head dim D={D} is not supported; expected D <= {_kernels.MAX_HEAD_DIM}")
    if scale is None:
        return D ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite value > 0, got {scale}")
    return float(scale)


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
    out, _ = _fwd_op(q, k, v, scale)
    return out
