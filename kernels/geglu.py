"""The GEGLU feed-forward projection (diffusers' ``GEGLU``), forward fused into one matmul kernel.

``proj = Linear(K, 2N)``; ``value, gate = proj(x).chunk(2, -1)``; ``out = value * gelu(gate)``
with the exact (erf) GELU. ``weight`` is the Linear's ``(2N, K)``: rows ``[0, N)`` make the value,
rows ``[N, 2N)`` the gate.

Forward: one program per ``(BLOCK_M, BLOCK_N)`` tile of the ``(M, N)`` output runs two
accumulators over K, ``x @ W[value rows].T`` and ``x @ W[gate rows].T``, both fed from the same
``x`` tile (one load of x per K step for both products), then adds the biases and applies
``value * gelu(gate)`` in fp32 and stores the tile once: the ``(M, 2N)`` projection is never
written. A default-mode Inductor graph cannot do this: it hands the projection to cuBLAS and
the value and gate halves are different columns of cuBLAS's output, so the GELU and the product
are a second kernel that reads the ``(M, 2N)`` intermediate back.

Backward (training): PyTorch, from the saved inputs: one matmul recomputes the projection
(cheaper than keeping the ``(M, 2N)`` tensor alive between forward and backward, which is
the memory the fused forward saves), then ``d value = dy * gelu(gate)``, ``d gate = dy * value *
gelu'(gate)`` in fp32 and the two matmuls of a Linear's backward.

Arithmetic: fp16/bf16 products on tensor cores with fp32 accumulation (wgmma on sm_90); fp32
inputs use exact fp32 (IEEE) products, never tf32, as diffusers' fp32 path does by default.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._aot import KernelSpec
from ._launch import ARCHS, DTYPE_NAMES, LaunchConfig, cdiv, device_arch
from . import _matmul
from ._matmul import GROUP_M, output_tile

SQRT1_2 = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle): fp32 math, float64 for float64 inputs.
# ----------------------------------------------------------------------------------------------
def _math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _gelu_derivative(gate: torch.Tensor) -> torch.Tensor:
    """d gelu(g) / dg = Phi(g) + g * phi(g) (exact GELU)."""
    cdf = 0.5 * (1.0 + torch.erf(gate * SQRT1_2))
    pdf = torch.exp(-0.5 * gate * gate) / math.sqrt(2.0 * math.pi)
    return cdf + gate * pdf


def geglu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``value * gelu(gate)`` of ``F.linear(x, weight, bias).chunk(2, -1)``, (M, N) in x's dtype."""
    math_dtype = _math_dtype(x)
    projection = torch.nn.functional.linear(x.to(math_dtype), weight.to(math_dtype),
                                            None if bias is None else bias.to(math_dtype))
    value, gate = projection.chunk(2, dim=-1)
    return (value * torch.nn.functional.gelu(gate)).to(x.dtype)


def geglu_backward_reference(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of :func:`geglu_reference` for x (M, K), weight (2N, K); dbias, the
    projection's (2N,) bias gradient, also without a bias (for callers to drop).

    The matmuls run in the inputs' dtype (fp32 accumulation on a GPU, as autograd's backward of
    diffusers' module does), the GELU and its derivative in fp32 (float64 for float64 inputs), so
    with float64 inputs this is also the backward's float64 oracle.
    """
    math_dtype = _math_dtype(x)
    projection = torch.nn.functional.linear(x, weight, bias)  # the one recomputing matmul
    value, gate = projection.to(math_dtype).chunk(2, dim=-1)
    dy = dy.to(math_dtype)
    d_value = dy * torch.nn.functional.gelu(gate)
    d_gate = dy * value * _gelu_derivative(gate)
    d_projection = torch.cat([d_value, d_gate], dim=-1).to(x.dtype)  # (M, 2N)
    dx = d_projection @ weight
    dweight = d_projection.t() @ x
    dbias = d_projection.sum(0, dtype=math_dtype).to(weight.dtype)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------------
# Triton kernel. ``X`` (M, K) and ``W`` (2N, K) with unit stride along K, ``Out`` (M, N) with unit
# stride along N. Programs walk the output tiles in groups (``_matmul.output_tile``).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _geglu_forward_kernel(
    X,             # (M, K), stride (stride_xm, 1)
    W,             # (2N, K), stride (stride_wn, 1): rows [0, N) value, [N, 2N) gate
    Bias,          # (2N,), or X when HAS_BIAS is 0 (never read)
    Out,           # (M, N), stride (stride_om, 1), written
    M, N, K,
    stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows, cols, safe_rows, safe_cols = output_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + safe_rows[:, None] * stride_xm + ks[None, :]
    value_ptrs = W + safe_cols[None, :] * stride_wn + ks[:, None]           # (BLOCK_K, BLOCK_N) of W[value].T
    gate_ptrs = value_ptrs + N.to(tl.int64) * stride_wn                     # the same columns of W[gate].T
    value = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        w_value = tl.load(value_ptrs, mask=k_ok[:, None], other=0.0)
        w_gate = tl.load(gate_ptrs, mask=k_ok[:, None], other=0.0)
        value = tl.dot(x, w_value, value, input_precision=DOT_PRECISION)
        gate = tl.dot(x, w_gate, gate, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        value_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
    if HAS_BIAS:
        value += tl.load(Bias + safe_cols).to(tl.float32)[None, :]
        gate += tl.load(Bias + N + safe_cols).to(tl.float32)[None, :]
    out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
    out_ptrs = Out + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


# ----------------------------------------------------------------------------------------------
# Launch configs, ``(BLOCK_M x BLOCK_N w<warps> s<stages>, BLOCK_K)`` per (arch, kind). Two
# accumulators make a (BLOCK_M, BLOCK_N) tile cost what a (BLOCK_M, 2 * BLOCK_N) GEMM tile does.
# * sm_90 tensor: 128 x (2 x 128) on 8 warps (two warpgroups, 64 rows each: wgmma's m64), fp32
#   accumulators 128 registers a thread; BLOCK_K 64 with 3 stages stages 3 x 48 KB of the 228 KB.
#   At AnimateDiff's and SVD's sizes (M = 2 * F * h * w >= 2048, N = 1280..5120) that is >= 160
#   tiles, a full wave or more of the 132 SMs.
# * sm_80 tensor: 128 x (2 x 64) on 8 warps, BLOCK_K 64, 4 stages (96 KB of the 164 KB): mma.sync
#   keeps its operand fragments in registers, and sm_90's tile spilled (104-112 B of stack at 255).
# * fp32 (both archs, CUDA-core IEEE products): 64 x (2 x 64) on 4 warps, K steps of 16.
# All compile without stack on triton 3.6 and the newest (tests/test_aot_compile.py).
# ----------------------------------------------------------------------------------------------
_TILES = {(90, "tensor"): ("128x128 w8 s3", 64), (80, "tensor"): ("128x64 w8 s4", 64),
          (90, "fp32"): ("64x64 w4 s2", 16), (80, "fp32"): ("64x64 w4 s2", 16)}


def launch_config(arch: int, dtype: torch.dtype) -> tuple[LaunchConfig, int]:
    """(tile config, BLOCK_K) a launch on ``arch`` with ``dtype`` inputs takes."""
    return _matmul.launch_config(_TILES, arch, dtype)


# ----------------------------------------------------------------------------------------------
# Launcher. ``x`` (M, K) and ``weight`` (2N, K) with unit stride along K, same dtype; ``bias`` (2N,)
# in that dtype or None (the public op sees to it).
# ----------------------------------------------------------------------------------------------
def geglu_forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(M, N) ``value * gelu(gate)``, contiguous, in x's dtype."""
    (m, k), n = x.shape, weight.shape[0] // 2
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    config, block_k = launch_config(device_arch(x.device), x.dtype)
    grid = (cdiv(m, config.block_m) * cdiv(n, config.block_n),)
    _geglu_forward_kernel[grid](
        x, weight, x if bias is None else bias, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=block_k,
        GROUP_M=GROUP_M, DOT_PRECISION=_matmul.dot_precision(x.dtype), **config.launch_options)
    return out


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (dtype, bias or not, arch) config the launcher can pick.
# ----------------------------------------------------------------------------------------------
def aot_specs() -> list[KernelSpec]:
    specs = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        name = DTYPE_NAMES[dtype]
        for arch in ARCHS:
            config, block_k = launch_config(arch, dtype)
            for has_bias in (True, False):
                signature = {"X": f"*{name}", "W": f"*{name}", "Bias": f"*{name}", "Out": f"*{name}",
                             **{size: "i32" for size in ("M", "N", "K", "stride_xm", "stride_wn", "stride_om")},
                             **{const: "constexpr" for const in ("HAS_BIAS", "BLOCK_M", "BLOCK_N", "BLOCK_K",
                                                                 "GROUP_M", "DOT_PRECISION")}}
                constexprs = {"HAS_BIAS": has_bias, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                              "BLOCK_K": block_k, "GROUP_M": GROUP_M, "DOT_PRECISION": _matmul.dot_precision(dtype)}
                specs.append(KernelSpec(module=__name__, kernel="_geglu_forward_kernel", signature=signature,
                                        constexprs=constexprs, archs=(arch,), expect_wgmma=_matmul.kind(dtype) == "tensor",
                                        **config.launch_options))
    return specs
