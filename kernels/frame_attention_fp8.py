"""FP8 frame-attention forward (opt-in, inference, sm_90): Q K^T on e4m3 tensor cores, P V in the
inputs' dtype. The op, key tables and shapes are those of :mod:`~vidgen.kernels.frame_attention`.

Every query and key token (a row of D values of one head) has its own scale: ``x ~= e4m3(x / s) * s``
with ``s = amax / 448``, the row's largest magnitude mapped to e4m3's largest finite value (finer
than SageAttention's per-block scales, for the cost of one multiply of the score tile by the
outer product of the scales, and independent of the tile config). Scores are
``(q8 . k8) * s_q * s_k``: exact products of e4m3 values summed in fp32, so the error is the
rounding of q and k to 3 mantissa bits (relative ~2**-4 per element, averaging out over D). The
probabilities and V stay in fp16/bf16: P V is half the FLOPs and its error would reach the output
directly. The head dim is padded to a power of two >= 32 (e4m3 wgmma contracts 32 at a time;
masked columns are zeros, which leave the scales and the scores unchanged).

The kernel walks the key frames with the tile helpers of :mod:`~vidgen.kernels.frame_attention`
(program order, (video, frame, head) offsets, masked tile loads).
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from ._aot import KernelSpec
from ._launch import (LOG2E, LaunchConfig, attention_spec, cdiv, check_grid, kernel_signature, merge_archs,
                      next_power_of_2)
from .frame_attention import (_SCALES, _SIZE_ARGS, _STATISTICS, _TABLES, _base_offset, _check_int32_span, _load_tile,
                              _query_block_program, _row_offsets, _unit_stride, frame_attention_reference)

FP8_MAX = 448.0  # largest finite e4m3 (the "fn" encoding: no infinities) value
FP8_DTYPES = (torch.float16, torch.bfloat16)
# BLOCK_D -> tile: 128 query rows per program (two wgmma warpgroups), 64-key steps; at 256 columns
# 64 rows and no pipelining, the largest tile that does not spill on triton 3.6 (sm_90).
_FP8_TILES = {32: "128x64 w4 s3", 64: "128x64 w8 s3", 128: "128x64 w8 s2", 256: "64x64 w8 s1"}
_FP8_WGMMA = r"wgmma\.mma_async\S*\.e4m3\.e4m3"  # the scores on e4m3 tensor cores (checked in the sm_90 PTX)


# ----------------------------------------------------------------------------------------------
# Reference: the kernel's quantisation in PyTorch (its tests' oracle and its CPU path)
# ----------------------------------------------------------------------------------------------
def fp8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., D) quantised to e4m3 with one scale per row of D values, as the kernel does, and
    dequantised back to fp32."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / FP8_MAX
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32) * scale


def frame_attention_fp8_reference(q, k, v, key_frames, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What the FP8 kernel computes, in PyTorch: every token of q and k (per head) rounded to e4m3
    with its own scale, then :func:`frame_attention_reference` in fp32 on the dequantised values
    (V unchanged). The oracle of the kernel's tests and its CPU path."""
    out, lse = frame_attention_reference(fp8_roundtrip(q), fp8_roundtrip(k), v.float(), key_frames, scale)
    return out.to(q.dtype), lse


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fp8_rows(x, AXIS: tl.constexpr):
    """(e4m3 tile, scales) of an fp32 tile with one scale per row along ``AXIS`` (the head dim):
    ``x ~= x8 * scale``. The cast rounds to nearest even, like ``torch.float8_e4m3fn``; the clamp
    only absorbs the division's last ulp."""
    scale = tl.maximum(tl.max(tl.abs(x), AXIS), 1e-30) / 448.0
    scaled = x / tl.expand_dims(scale, AXIS)
    return tl.clamp(scaled, -448.0, 448.0).to(tl.float8e4nv), scale


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _frame_attention_forward_fp8_kernel(
    Q,                     # (B, F, N, H, D) fp16/bf16, any strides, unit stride on D
    K,                     # (B, F, M, H, D)
    V,                     # (B, F, M, H, D)
    Out,                   # (B, F, N, H, D) output, Q's dtype
    Lse,                   # (B, F, H, N) fp32 output: natural-log log-sum-exp of the scaled scores
    Table,                 # (F, table_width) int32: distinct key frames first
    Counts,                # (F,) int32: distinct key frames per query frame
    stride_qb, stride_qf, stride_qn, stride_qh,
    stride_kb, stride_kf, stride_km, stride_kh,
    stride_vb, stride_vf, stride_vm, stride_vh,
    stride_ob, stride_of, stride_on, stride_oh,
    num_frames, num_heads, N, M, table_width, num_m_blocks,
    qk_scale,              # scale * log2(e)
    head_dim,              # D <= BLOCK_D
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr,
):
    m_block, f, h, b = _query_block_program(num_m_blocks, num_frames, num_heads)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_off = _base_offset(b, stride_qb, f.to(tl.int64), stride_qf, h, stride_qh, ALIGN)
    q = _load_tile(Q + q_off, offs_m, stride_qn, N, offs_d, head_dim, True, True, False, ALIGN)   # (BLOCK_M, BLOCK_D)
    q8, q_scale = _fp8_rows(q.to(tl.float32), 1)                                   # q_scale: (BLOCK_M,)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for j in range(0, tl.load(Counts + f)):
        g = tl.load(Table + f * table_width + j).to(tl.int64)
        k_base = K + _base_offset(b, stride_kb, g, stride_kf, h, stride_kh, ALIGN)
        v_base = V + _base_offset(b, stride_vb, g, stride_vf, h, stride_vh, ALIGN)
        for start_n in range(0, M, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kt = _load_tile(k_base, offs_n, stride_km, M, offs_d, head_dim, True, True, True, ALIGN)  # (BLOCK_D, BLOCK_N)
            kt8, k_scale = _fp8_rows(kt.to(tl.float32), 0)                        # k_scale: (BLOCK_N,)
            s = tl.dot(q8, kt8, out_dtype=tl.float32) * (q_scale[:, None] * qk_scale) * k_scale[None, :]  # log2 units
            s = tl.where(offs_n[None, :] < M, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_tile(v_base, offs_n, stride_vm, M, offs_d, head_dim, True, True, False, ALIGN)  # (BLOCK_N, BLOCK_D)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    o_off = _base_offset(b, stride_ob, f.to(tl.int64), stride_of, h, stride_oh, ALIGN)
    o_rows = _row_offsets(offs_m, stride_on, ALIGN)
    tl.store(Out + o_off + o_rows[:, None] + offs_d[None, :], (acc / l_i[:, None]).to(Out.dtype.element_ty),
             mask=(offs_m[:, None] < N) & (offs_d[None, :] < head_dim))
    lse_off = ((b * num_frames + f) * num_heads + h) * N
    tl.store(Lse + lse_off + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=offs_m < N)  # * ln 2


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
def fp8_block_d(head_dim: int) -> int:
    """The FP8 kernel's padded head width: a power of two >= 32."""
    return max(32, next_power_of_2(head_dim))


def fp8_config(head_dim: int) -> LaunchConfig:
    return LaunchConfig.parse(_FP8_TILES[fp8_block_d(head_dim)])


def frame_attention_forward_fp8_triton(q, k, v, table, counts, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, F, N, H, D) contiguous, lse (B, F, H, N) fp32) of the FP8 forward; fp16/bf16 inputs,
    run on sm_90 (or the interpreter). One config per padded width (:func:`fp8_config`)."""
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    B, F, N, H, D = q.shape
    M = k.shape[2]
    cfg = fp8_config(D)
    out = torch.empty((B, F, N, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, F, H, N), dtype=torch.float32, device=q.device)
    _check_int32_span(q=q, k=k, v=v)
    num_m_blocks = cdiv(N, cfg.block_m)
    check_grid(num_m_blocks * F * H * B, "frame_attention")
    _frame_attention_forward_fp8_kernel[(num_m_blocks * F * H * B,)](
        q, k, v, out, lse, table, counts,
        *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], *out.stride()[:4],
        F, H, N, M, table.shape[1], num_m_blocks, scale * LOG2E, D,
        BLOCK_D=fp8_block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, ALIGN=1, **cfg.launch_options)
    return out, lse


def aot_specs() -> list[KernelSpec]:
    """The FP8 forward at every padded width, fp16 and bf16, for sm_90 (e4m3 wgmma)."""
    kernel = _frame_attention_forward_fp8_kernel
    specs = []
    for dtype, (width, text) in itertools.product(("fp16", "bf16"), _FP8_TILES.items()):
        cfg = LaunchConfig.parse(text)
        signature = kernel_signature(kernel, dtype, fp32_pointers=_STATISTICS, int32_pointers=_TABLES,
                                     fp32_scalars=_SCALES)
        constexprs = {"BLOCK_D": width, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "ALIGN": 1}
        specs.append((attention_spec(__name__, kernel, signature, constexprs, cfg, expect_wgmma=True,
                                     stack=(0, ""), expect_sm90_ptx=(_FP8_WGMMA,)), 90))
    return merge_archs(specs)
