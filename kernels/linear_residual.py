"""A Linear with the residual add in its epilogue: ``out = x @ weight.T + bias + residual``.

A transformer block ends each of its halves with ``h = proj(core) + h``: the attention's output
projection (``to_out[0]``) and the feed-forward's last Linear (``ff.net[2]``) write their (M, N)
output, then an add reads it back beside the residual and writes the sum. Here one program per
``(BLOCK_M, BLOCK_N)`` output tile starts one fp32 accumulator from the residual tile plus the
bias, adds the products over K to it and stores once: the projection's output is never written or read back.
Default-mode Inductor hands the matmul to cuBLAS (its epilogue takes no arbitrary tensor), so
the add stays a second kernel there.

Backward (training): PyTorch (``vidgen.ops.linear_residual``): the residual's gradient is the
output's, the rest is a Linear's.

Arithmetic: fp16/bf16 products on tensor cores with fp32 accumulation (wgmma on sm_90); fp32
inputs use exact fp32 (IEEE) products, never tf32, as diffusers' fp32 path does by default. The
sum is rounded once, to the output's dtype (diffusers rounds the projection, then the sum).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _matmul
from ._aot import KernelSpec
from ._launch import ARCHS, DTYPE_NAMES, LaunchConfig, cdiv, device_arch
from ._matmul import GROUP_M, output_tile


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle): fp32 math, float64 for float64 inputs.
# ----------------------------------------------------------------------------------------------
def linear_residual_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              residual: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias) + residual`` summed in fp32 (float64 for float64 inputs), in x's dtype."""
    math_dtype = torch.promote_types(x.dtype, torch.float32)
    out = torch.nn.functional.linear(x.to(math_dtype), weight.to(math_dtype),
                                     None if bias is None else bias.to(math_dtype))
    return (out + residual.to(math_dtype)).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernel. ``X`` (M, K) and ``W`` (N, K) with unit stride along K, ``Residual`` and ``Out``
# (M, N) with unit stride along N. Programs walk the output tiles in groups (``_matmul.output_tile``).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _linear_residual_forward_kernel(
    X,             # (M, K), stride (stride_xm, 1)
    W,             # (N, K), stride (stride_wn, 1)
    Bias,          # (N,), or X when HAS_BIAS is 0 (never read)
    Residual,      # (M, N), stride (stride_rm, 1)
    Out,           # (M, N), stride (stride_om, 1), written
    M, N, K,
    stride_xm, stride_wn, stride_rm, stride_om,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows, cols, safe_rows, safe_cols = output_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # The accumulator starts as residual + bias (BLAS's beta = 1): the K loop adds the products to
    # it, and no second (BLOCK_M, BLOCK_N) tile is live beside the accumulator after the loop.
    in_bounds = (rows < M)[:, None] & (cols < N)[None, :]
    wide_rows = rows.to(tl.int64)[:, None]
    acc = tl.load(Residual + wide_rows * stride_rm + cols[None, :], mask=in_bounds, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + safe_cols).to(tl.float32)[None, :]
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + safe_rows[:, None] * stride_xm + ks[None, :]
    w_ptrs = W + safe_cols[None, :] * stride_wn + ks[:, None]  # (BLOCK_K, BLOCK_N) of W.T
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    tl.store(Out + wide_rows * stride_om + cols[None, :], acc.to(Out.dtype.element_ty), mask=in_bounds)


# ----------------------------------------------------------------------------------------------
# Launch configs, ``(BLOCK_M x BLOCK_N w<warps> s<stages>, BLOCK_K)`` per (arch, kind): the GEGLU
# kernel's tiles (kernels/geglu.py says why) with its two (BLOCK_M, BLOCK_N) accumulators made one
# (BLOCK_M, 2 * BLOCK_N): the same registers, shared memory per stage and products per K step.
# * sm_90 tensor: 128 x 256 on 8 warps (two warpgroups, wgmma's m64 each), BLOCK_K 64, 3 stages of
#   48 KB. Adding the residual tile after the K loop spilled (208-216 B of stack at 255 registers:
#   it is live beside the 128-register accumulator); starting the accumulator from it does not.
# * sm_80 tensor: 128 x 128 on 8 warps, BLOCK_K 64, 4 stages.
# * fp32 (both archs, CUDA-core IEEE products): 64 x 128 on 4 warps, K steps of 16.
# Every entry compiles without stack on triton 3.6 and the newest (tests/test_aot_compile.py).
# ----------------------------------------------------------------------------------------------
_TILES = {(90, "tensor"): ("128x256 w8 s3", 64), (80, "tensor"): ("128x128 w8 s4", 64),
          (90, "fp32"): ("64x128 w4 s2", 16), (80, "fp32"): ("64x128 w4 s2", 16)}


def launch_config(arch: int, dtype: torch.dtype) -> tuple[LaunchConfig, int]:
    """(tile config, BLOCK_K) a launch on ``arch`` with ``dtype`` inputs takes."""
    return _matmul.launch_config(_TILES, arch, dtype)


# ----------------------------------------------------------------------------------------------
# Launcher. ``x`` (M, K) and ``weight`` (N, K) with unit stride along K, ``residual`` (M, N) with
# unit stride along N, one dtype; ``bias`` (N,) in that dtype or None (the public op sees to it).
# ----------------------------------------------------------------------------------------------
def linear_residual_forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   residual: torch.Tensor) -> torch.Tensor:
    """(M, N) ``x @ weight.T + bias + residual``, contiguous, in x's dtype."""
    (m, k), n = x.shape, weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    config, block_k = launch_config(device_arch(x.device), x.dtype)
    grid = (cdiv(m, config.block_m) * cdiv(n, config.block_n),)
    _linear_residual_forward_kernel[grid](
        x, weight, x if bias is None else bias, residual, out, m, n, k,
        x.stride(0), weight.stride(0), residual.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=block_k,
        GROUP_M=GROUP_M, DOT_PRECISION=_matmul.dot_precision(x.dtype), **config.launch_options)
    return out


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (dtype, bias or not, arch) config the launcher can pick.
# ----------------------------------------------------------------------------------------------
def aot_specs() -> list[KernelSpec]:
    specs = []
    sizes = ("M", "N", "K", "stride_xm", "stride_wn", "stride_rm", "stride_om")
    consts = ("HAS_BIAS", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "DOT_PRECISION")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        name = DTYPE_NAMES[dtype]
        for arch in ARCHS:
            config, block_k = launch_config(arch, dtype)
            for has_bias in (True, False):
                signature = {**{ptr: f"*{name}" for ptr in ("X", "W", "Bias", "Residual", "Out")},
                             **{size: "i32" for size in sizes}, **{const: "constexpr" for const in consts}}
                constexprs = {"HAS_BIAS": has_bias, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                              "BLOCK_K": block_k, "GROUP_M": GROUP_M, "DOT_PRECISION": _matmul.dot_precision(dtype)}
                specs.append(KernelSpec(module=__name__, kernel="_linear_residual_forward_kernel",
                                        signature=signature, constexprs=constexprs, archs=(arch,),
                                        expect_wgmma=_matmul.kind(dtype) == "tensor", **config.launch_options))
    return specs
