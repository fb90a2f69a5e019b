"""Public GEGLU op: :func:`geglu`, diffusers' ``GEGLU`` feed-forward projection with its GELU and
product fused into the matmul's epilogue, forward and backward.

Layout: the custom ops ``vidgen::geglu_fwd`` (the Triton kernel or the PyTorch reference) and
``vidgen::geglu_bwd`` (PyTorch: one matmul recomputes the projection, then a Linear's backward),
differentiable, opaque to torch.compile (Inductor cannot fuse the gated epilogue itself); the
public function with its argument checks.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from ..kernels import geglu as _kernels
from ..kernels.geglu import geglu_backward_reference, geglu_reference

__all__ = ["geglu", "geglu_unsupported_reason"]

GEGLU = _backend.declare("geglu", ("triton", "torch"), differentiable=True)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp64: reference only
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Custom ops: no host synchronisation (CUDA-graph safe). ``x`` is (M, K), ``weight`` (2N, K),
# ``bias`` (2N,) or None, all one dtype.
# ----------------------------------------------------------------------------------------------
def _geglu_forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(M, N) contiguous, in x's dtype."""
    x, weight = x.contiguous(), weight.contiguous()
    if _backend.runs_triton(GEGLU, x):
        return _kernels.geglu_forward_triton(x, weight, None if bias is None else bias.contiguous())
    return geglu_reference(x, weight, bias)


# The public function calls the implementation itself where the registration would only cost
# time (eager inference: see ``_backend.direct_call_ok``).
_geglu_forward = torch.library.custom_op("vidgen::geglu_fwd", _geglu_forward_impl, mutates_args=())


@_geglu_forward.register_fake
def _geglu_forward_fake(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0] // 2))


@torch.library.custom_op("vidgen::geglu_bwd", mutates_args=())
def _geglu_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx (M, K), dweight (2N, K), dbias (2N,)): the projection's bias gradient even without a bias
    (autograd drops it then); every backend runs the PyTorch backward."""
    return geglu_backward_reference(dy.contiguous(), x.contiguous(), weight.contiguous(), bias)


@_geglu_backward.register_fake
def _geglu_backward_fake(dy, x, weight, bias):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _geglu_setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _geglu_autograd_backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = _geglu_backward(dy, x, weight, bias)
    return dx, dweight, None if bias is None else dbias


_geglu_forward.register_autograd(_geglu_autograd_backward, setup_context=_geglu_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def geglu_unsupported_reason(dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`geglu`'s kernel cannot serve a projection in ``dtype``, or None: any K and N
    (tails are masked), fp16, bf16 or fp32 operands of one dtype."""
    if dtype is not None and dtype not in _KERNEL_DTYPES:
        return f"the GEGLU kernel takes fp16, bf16 or fp32, not {dtype}"
    return None


def _check(x, weight, bias) -> None:
    _checks.linear_operands(x, weight, bias, dtypes=_DTYPES, rows_ok=lambda rows: rows > 0 and rows % 2 == 0,
                            weight_shape="(2N, K) = (2N, {K}), the projection's value rows then its gate rows")
    _checks.same_device(x=x, weight=weight, bias=bias)


def geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ``GEGLU``: ``value * gelu(gate)`` where ``value, gate = F.linear(x, weight, bias).chunk(2, -1)``.

    Args:
        x: (..., K), fp16, bf16 or fp32 (fp64 runs the PyTorch reference). Any strides (a
            non-contiguous x is copied).
        weight: (2N, K) in x's dtype: the ``nn.Linear(K, 2N)`` weight, rows [0, N) the value's and
            rows [N, 2N) the gate's (``GEGLU.proj.weight``).
        bias: (2N,) in x's dtype, or None.

    Returns:
        (..., N) in x's dtype, contiguous. Exact (erf) GELU. Differentiable in x, weight and bias.

    One Triton kernel (``vidgen.kernels.geglu``): a tiled matmul with two fp32 accumulators, the
    value and the gate columns of one output tile, sharing each x tile; bias, GELU and product
    in the epilogue and one store, so the (..., 2N) projection is never written. The backward
    is PyTorch (one matmul recomputes the projection, then a Linear's two). Backends: Triton on
    CUDA (and on CPU under ``TRITON_INTERPRET=1``), else the PyTorch reference. Under
    torch.compile an opaque custom op: Inductor cannot put this epilogue on its cuBLAS matmul.
    """
    _check(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    if _backend.direct_call_ok(x, weight, *(() if bias is None else (bias,))):
        out = _geglu_forward_impl(rows, weight, bias)
    else:
        out = _geglu_forward(rows, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0] // 2)
