"""Public residual-Linear op: :func:`linear_residual`, ``F.linear(x, weight, bias) + residual`` with
the add in the matmul's epilogue, forward and backward.

Layout: the custom op ``vidgen::linear_residual_fwd`` (the Triton kernel or the PyTorch
reference), differentiable with a PyTorch backward (the residual's gradient is the output's,
then a Linear's two matmuls), opaque to torch.compile (Inductor cannot put the add on its cuBLAS
matmul); the public function with its argument checks.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from ..kernels import linear_residual as _kernels
from ..kernels.linear_residual import linear_residual_reference

__all__ = ["linear_residual", "linear_residual_unsupported_reason"]

LINEAR_RESIDUAL = _backend.declare("linear_residual", ("triton", "torch"), differentiable=True)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp64: reference only
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Custom op: no host synchronisation (CUDA-graph safe). ``x`` is (M, K), ``weight`` (N, K),
# ``bias`` (N,) or None, ``residual`` (M, N), all one dtype.
# ----------------------------------------------------------------------------------------------
def _linear_residual_forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                  residual: torch.Tensor) -> torch.Tensor:
    """(M, N) contiguous, in x's dtype."""
    if _backend.runs_triton(LINEAR_RESIDUAL, x):
        residual = residual if residual.stride(-1) == 1 else residual.contiguous()
        return _kernels.linear_residual_forward_triton(x.contiguous(), weight.contiguous(),
                                                       None if bias is None else bias.contiguous(), residual)
    return linear_residual_reference(x, weight, bias, residual)


# The public function calls the implementation itself where the registration would only cost
# time (eager inference: see ``_backend.direct_call_ok``).
_linear_residual_forward = torch.library.custom_op("vidgen::linear_residual_fwd", _linear_residual_forward_impl,
                                                   mutates_args=())


@_linear_residual_forward.register_fake
def _linear_residual_forward_fake(x, weight, bias, residual):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_residual_setup_context(ctx, inputs, output):
    x, weight, bias, residual = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_residual_autograd_backward(ctx, dy):
    """(dx, dweight, dbias, dresidual): a Linear's backward in the inputs' dtype (fp32 accumulation on
    a GPU, as autograd's backward of diffusers' Linear + add), and dy itself for the residual."""
    x, weight = ctx.saved_tensors
    dx = dy @ weight if ctx.needs_input_grad[0] else None
    dweight = dy.t() @ x if ctx.needs_input_grad[1] else None
    dbias = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dweight, dbias, dy


_linear_residual_forward.register_autograd(_linear_residual_autograd_backward,
                                           setup_context=_linear_residual_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def linear_residual_unsupported_reason(dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`linear_residual`'s kernel cannot serve a projection in ``dtype``, or None: any
    M, N and K (tails are masked), fp16, bf16 or fp32 operands of one dtype."""
    if dtype is not None and dtype not in _KERNEL_DTYPES:
        return f"the residual Linear kernel takes fp16, bf16 or fp32, not {dtype}"
    return None


def _check(x, weight, bias, residual) -> None:
    _checks.linear_operands(x, weight, bias, dtypes=_DTYPES, weight_shape="(N, K) = (N, {K}), the Linear's weight")
    _checks.tensor("residual", residual, dtypes=_DTYPES)
    expected = (*x.shape[:-1], weight.shape[0])
    if tuple(residual.shape) != expected:
        raise ValueError(f"residual: expected the output's shape {expected}, got {tuple(residual.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual: expected x's dtype ({x.dtype}), got {residual.dtype}")
    _checks.same_device(x=x, weight=weight, bias=bias, residual=residual)


def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias) + residual``: a transformer block's output projection and the
    residual add after it, in one kernel.

    Args:
        x: (..., K), fp16, bf16 or fp32 (fp64 runs the PyTorch reference). Any strides (a
            non-contiguous x is copied).
        weight: (N, K) in x's dtype, the ``nn.Linear(K, N)`` weight.
        bias: (N,) in x's dtype, or None.
        residual: (..., N), x's leading shape, in x's dtype. Any strides.

    Returns:
        A new (..., N) tensor in x's dtype, contiguous; the sum is rounded once. Differentiable in
        x, weight, bias and residual.

    One Triton kernel (``vidgen.kernels.linear_residual``): a tiled matmul with one fp32
    accumulator; bias and the residual tile added in the epilogue and one store, so the
    projection's output is never written and read back. The backward is PyTorch. Backends:
    Triton on CUDA (and on CPU under ``TRITON_INTERPRET=1``), else the PyTorch reference. Under
    torch.compile an opaque custom op.
    """
    _check(x, weight, bias, residual)
    rows, residual_rows = x.reshape(-1, x.shape[-1]), residual.reshape(-1, weight.shape[0])
    if _backend.direct_call_ok(x, weight, residual, *(() if bias is None else (bias,))):
        out = _linear_residual_forward_impl(rows, weight, bias, residual_rows)
    else:
        out = _linear_residual_forward(rows, weight, bias, residual_rows)
    return out.view(*x.shape[:-1], weight.shape[0])
