"""Temporal attention: self-attention over the frame axis (METHODS.md section 2), forward and backward.

``q``, ``k``, ``v`` are (B, F, N, H, D) with any strides: for every (video b, spatial token n,
head h) an independent attention over the F frames. That is B*N*H tiny problems (F is 8-32,
sometimes 128+), so the job is memory bound and general attention kernels, whose 128-row tiles
hold one problem each, leave the tensor cores idle and the memory system starved.

Packing. A program owns ``BLOCK_M`` rows. When F <= BLOCK_M it packs ``per_group =
BLOCK_M // F`` problems into them, row ``r`` being frame ``r % F`` of problem ``r // F`` of its
group; one ``BLOCK_M x BLOCK_M`` score tile covers all of them and a block-diagonal mask keeps
each problem to its own frames (the off-diagonal products are wasted flops, cheap next to the
bytes). When F > BLOCK_M a group is one problem and the kernels tile its frames in slots of
BLOCK_M with an online softmax. Problems are numbered with the head fastest, then the token,
then the video, so a group's rows of one frame are adjacent in memory in both UNet layouts,
the image layout (B*F, N, H*D) and the frame-major layout (B*N, F, H*D).

Kernels (one program per (problem group, frame tile), :func:`launch_plan`):

* forward: reads q, k, v once (per frame tile) and writes out once, plus the log-sum-exp of each
  row's scaled scores (natural log, ``lse`` (B, N, H, F) fp32) that the backward uses to rebuild
  the probabilities.
* backward dk/dv: per key tile, loops over the query tiles; with one frame tile it sees every
  score of its problems and also writes dq (``FUSE_DQ``), so the backward reads q, k, v, out,
  dout once and writes dq, dk, dv once.
* backward dq: per query tile, loops over the key tiles: longer sequences (and the widths whose
  fused kernel would spill, ``_FUSED_DQ``) run it after the dk/dv kernel.

The grid is one-dimensional (no 65,535 limit) and element offsets are int64. Head dims are
padded to a power of two >= 16 in registers only (masked lanes move no bytes); when every row
of every tensor starts on 16 bytes (``ALIGN``, :func:`vector_align`: D = 40/80/160 in fp16 from
a UNet projection) the loads and stores are 128-bit. fp16/bf16 use tensor cores with fp32
accumulation; fp32 inputs use exact fp32 (IEEE) products, never tf32 (``DOT_PRECISION``).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._aot import KernelSpec
from ._launch import (ARCHS, DTYPE_NAMES, LOG2E, TORCH_DTYPES, LaunchConfig, attention_spec, cdiv, check_grid,
                      device_arch, dot_precision, kernel_signature, merge_archs, next_power_of_2, stack_allowance,
                      table_key)

MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 256  # the head dims the kernels serve (any D in between)


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle): fp32 math, float64 when given it.
# ----------------------------------------------------------------------------------------------
def _problem_major(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, F, N, H, D) -> (B, N, H, F, D) view in ``dtype``."""
    return t.to(dtype).permute(0, 2, 3, 1, 4)


def temporal_attention_reference(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale * q k^T) v`` over frames for every (b, n, h).

    Returns ``(out, lse)``: out (B, F, N, H, D) in q's dtype, lse (B, N, H, F) fp32 (float64
    for float64 inputs), the natural-log log-sum-exp of each query's scaled scores.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qp, kp, vp = (_problem_major(t, compute) for t in (q, k, v))
    scores = (qp @ kp.transpose(-1, -2)) * scale          # (B, N, H, F, F)
    lse = torch.logsumexp(scores, dim=-1)                 # (B, N, H, F)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ vp      # (B, N, H, F, D)
    return out.permute(0, 3, 1, 2, 4).to(q.dtype), lse


def temporal_attention_backward_reference(dout, q, k, v, lse, scale: float):
    """(dq, dk, dv) of :func:`temporal_attention_reference` from its saved ``lse``."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qp, kp, vp, dop = (_problem_major(t, compute) for t in (q, k, v, dout))
    probs = torch.exp((qp @ kp.transpose(-1, -2)) * scale - lse.to(compute).unsqueeze(-1))
    dv = probs.transpose(-1, -2) @ dop
    dprobs = dop @ vp.transpose(-1, -2)
    dscores = probs * (dprobs - (probs * dprobs).sum(-1, keepdim=True))
    dq = (dscores @ kp) * scale
    dk = (dscores.transpose(-1, -2) @ qp) * scale
    return tuple(g.permute(0, 3, 1, 2, 4).to(q.dtype) for g in (dq, dk, dv))


# ----------------------------------------------------------------------------------------------
# Triton kernels. Every tensor is (B, F, N, H, D) with any strides but lse, (B, N, H, F) fp32
# contiguous; a row is one (video, frame, token, head), its element offset int64.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _locate_rows(group, tile, num_problems, N, num_heads, num_frames, slot, per_group, BLOCK_M: tl.constexpr):
    """Which (problem, frame) each of a program's BLOCK_M rows holds, and whether it is real.

    Row r is frame ``tile * slot + r % slot`` of problem ``group * per_group + r // slot``.
    """
    rows = tl.arange(0, BLOCK_M)
    member = rows // slot
    frame = tile * slot + rows % slot
    problem = group * per_group + member          # int64: group is int64
    valid = (member < per_group) & (frame < num_frames) & (problem < num_problems)
    head = problem % num_heads
    token = (problem // num_heads) % N
    video = problem // (num_heads * N)
    return member, frame, problem, valid, video, token, head


@triton.jit
def _row_offsets(video, frame, token, head, stride_b, stride_f, stride_n, stride_h, ALIGN: tl.constexpr):
    """Element offset of each row (video, frame, token, head) of one tensor."""
    offsets = video * stride_b + frame * stride_f + token * stride_n + head * stride_h
    if ALIGN > 1:  # the launcher checked every row start is a whole 16-byte vector: vectorised access
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit
def _program_tile(num_tiles, head_dim, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """This program's problem group and frame tile, the head-dim offsets and their mask."""
    pid = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = (dims // ALIGN) < (head_dim // ALIGN)  # == dims < D (ALIGN divides D), mask constant per vector
    return pid // num_tiles, pid % num_tiles, dims, dim_ok


@triton.jit
def _load_key_tile(K, V, group, tile, dims, dim_ok, num_problems, N, num_heads, num_frames, slot, per_group,
                   stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
                   stride_vb, stride_vf, stride_vn, stride_vh, stride_vd,
                   BLOCK_M: tl.constexpr, ALIGN: tl.constexpr):
    """The k and v rows of frame tile ``tile`` (zero where not real) and where each row lives."""
    member, frame, problem, valid, video, token, head = _locate_rows(
        group, tile, num_problems, N, num_heads, num_frames, slot, per_group, BLOCK_M)
    mask = valid[:, None] & dim_ok[None, :]
    k_rows = _row_offsets(video, frame, token, head, stride_kb, stride_kf, stride_kn, stride_kh, ALIGN)
    v_rows = _row_offsets(video, frame, token, head, stride_vb, stride_vf, stride_vn, stride_vh, ALIGN)
    k = tl.load(K + k_rows[:, None] + dims[None, :] * stride_kd, mask=mask, other=0.0)   # (BLOCK_M, BLOCK_D)
    v = tl.load(V + v_rows[:, None] + dims[None, :] * stride_vd, mask=mask, other=0.0)
    return member, frame, valid, video, token, head, k, v


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    # The kernels' one product: fp32 inputs keep full precision ("ieee"; tf32 would cost ~1e-3),
    # fp16/bf16 take the tensor cores.
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _temporal_attention_forward_kernel(
    Q,                     # (B, F, N, H, D) any strides
    K,                     # (B, F, N, H, D) any strides
    V,                     # (B, F, N, H, D) any strides
    Out,                   # (B, F, N, H, D) any strides, written
    Lse,                   # (B, N, H, F) fp32 contiguous, written: natural-log LSE of the scaled scores
    stride_qb, stride_qf, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vf, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_of, stride_on, stride_oh, stride_od,
    num_problems,          # B * N * H
    N, num_heads, num_frames, head_dim,
    slot,                  # frames per problem per tile: min(F, BLOCK_M)
    per_group,             # problems per program: BLOCK_M // slot
    num_tiles,             # cdiv(F, slot)
    qk_scale,              # scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # elements every row start and D are multiples of (16 B, or 1 if not known)
):
    group, q_tile, dims, dim_ok = _program_tile(num_tiles, head_dim, BLOCK_D, ALIGN)

    q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
        group, q_tile, num_problems, N, num_heads, num_frames, slot, per_group, BLOCK_M)
    q_rows = _row_offsets(video, q_frame, token, head, stride_qb, stride_qf, stride_qn, stride_qh, ALIGN)
    q_mask = q_valid[:, None] & dim_ok[None, :]
    q = tl.load(Q + q_rows[:, None] + dims[None, :] * stride_qd, mask=q_mask, other=0.0)    # (BLOCK_M, BLOCK_D)

    # Finite start so rows without a key (padding) never produce inf - inf.
    row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k_tile in range(0, num_tiles):
        k_member, _, k_valid, _, _, _, k, v = _load_key_tile(
            K, V, group, k_tile, dims, dim_ok, num_problems, N, num_heads, num_frames, slot, per_group,
            stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
            stride_vb, stride_vf, stride_vn, stride_vh, stride_vd, BLOCK_M, ALIGN)

        scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale    # (BLOCK_M, BLOCK_M)
        same_problem = (q_member[:, None] == k_member[None, :]) & k_valid[None, :]
        scores = tl.where(same_problem, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, DOT_PRECISION)
        row_max = new_max

    row_sum = tl.where(q_valid, row_sum, 1.0)
    out = acc / row_sum[:, None]
    o_rows = _row_offsets(video, q_frame, token, head, stride_ob, stride_of, stride_on, stride_oh, ALIGN)
    tl.store(Out + o_rows[:, None] + dims[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=q_mask)
    lse = (row_max + tl.log2(row_sum)) * 0.6931471805599453
    tl.store(Lse + q_problem * num_frames + q_frame, lse, mask=q_valid)


@triton.jit
def _load_query_side(Q, DOut, Out, Lse, video, frame, token, head, problem, valid, dims, dim_ok, num_frames,
                     stride_qb, stride_qf, stride_qn, stride_qh, stride_qd,
                     stride_gb, stride_gf, stride_gn, stride_gh, stride_gd,
                     stride_ob, stride_of, stride_on, stride_oh, stride_od, ALIGN: tl.constexpr):
    """q, dout, the LSE in log2 units of the scaled scores and delta = rowsum(dout * out)."""
    mask = valid[:, None] & dim_ok[None, :]
    q_rows = _row_offsets(video, frame, token, head, stride_qb, stride_qf, stride_qn, stride_qh, ALIGN)
    g_rows = _row_offsets(video, frame, token, head, stride_gb, stride_gf, stride_gn, stride_gh, ALIGN)
    o_rows = _row_offsets(video, frame, token, head, stride_ob, stride_of, stride_on, stride_oh, ALIGN)
    q = tl.load(Q + q_rows[:, None] + dims[None, :] * stride_qd, mask=mask, other=0.0)      # (BLOCK_M, BLOCK_D)
    do = tl.load(DOut + g_rows[:, None] + dims[None, :] * stride_gd, mask=mask, other=0.0)
    o = tl.load(Out + o_rows[:, None] + dims[None, :] * stride_od, mask=mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse_log2 = tl.load(Lse + problem * num_frames + frame, mask=valid, other=0.0) * 1.4426950408889634
    return q, do, delta, lse_log2


@triton.jit
def _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid, k_member, k_valid, qk_scale,
                       DOT_PRECISION: tl.constexpr):
    """P = exp(scale q k^T - lse) and dS = P * (dO v^T - delta), zero off each problem's block."""
    scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale             # (BLOCK_M, BLOCK_M)
    block = (q_member[:, None] == k_member[None, :]) & q_valid[:, None] & k_valid[None, :]
    probs = tl.where(block, tl.exp2(scores - lse_log2[:, None]), 0.0)
    dprobs = _dot(do, tl.trans(v), DOT_PRECISION)
    dscores = probs * (dprobs - delta[:, None])
    return probs, dscores


@triton.jit
def _temporal_attention_backward_dkdv_kernel(
    Q, K, V,               # (B, F, N, H, D) any strides
    Out,                   # (B, F, N, H, D) any strides: the forward's output
    DOut,                  # (B, F, N, H, D) any strides: gradient of the output
    Lse,                   # (B, N, H, F) fp32 contiguous: the forward's LSE
    DQ, DK, DV,            # (B, F, N, H, D) any strides, written (DQ only when FUSE_DQ)
    stride_qb, stride_qf, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vf, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_of, stride_on, stride_oh, stride_od,
    stride_gb, stride_gf, stride_gn, stride_gh, stride_gd,         # dout
    stride_dqb, stride_dqf, stride_dqn, stride_dqh, stride_dqd,
    stride_dkb, stride_dkf, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvf, stride_dvn, stride_dvh, stride_dvd,
    num_problems, N, num_heads, num_frames, head_dim, slot, per_group, num_tiles,   # as in the forward
    scale,                 # softmax scale
    qk_scale,              # scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # elements every row start and D are multiples of (16 B, or 1 if not known)
    FUSE_DQ: tl.constexpr,  # one frame tile: this program sees every score of its problems
):
    group, k_tile, dims, dim_ok = _program_tile(num_tiles, head_dim, BLOCK_D, ALIGN)
    k_member, k_frame, k_valid, video_k, token_k, head_k, k, v = _load_key_tile(
        K, V, group, k_tile, dims, dim_ok, num_problems, N, num_heads, num_frames, slot, per_group,
        stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
        stride_vb, stride_vf, stride_vn, stride_vh, stride_vd, BLOCK_M, ALIGN)

    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for q_tile in range(0, num_tiles):
        q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
            group, q_tile, num_problems, N, num_heads, num_frames, slot, per_group, BLOCK_M)
        q, do, delta, lse_log2 = _load_query_side(
            Q, DOut, Out, Lse, video, q_frame, token, head, q_problem, q_valid, dims, dim_ok, num_frames,
            stride_qb, stride_qf, stride_qn, stride_qh, stride_qd, stride_gb, stride_gf, stride_gn, stride_gh, stride_gd,
            stride_ob, stride_of, stride_on, stride_oh, stride_od, ALIGN)
        probs, dscores = _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid,
                                            k_member, k_valid, qk_scale, DOT_PRECISION)
        dv += _dot(tl.trans(probs.to(do.dtype)), do, DOT_PRECISION)
        dk += _dot(tl.trans(dscores.to(q.dtype)), q, DOT_PRECISION)
        if FUSE_DQ:
            dq = _dot(dscores.to(k.dtype), k, DOT_PRECISION) * scale
            dq_rows = _row_offsets(video, q_frame, token, head, stride_dqb, stride_dqf, stride_dqn, stride_dqh, ALIGN)
            tl.store(DQ + dq_rows[:, None] + dims[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty),
                     mask=q_valid[:, None] & dim_ok[None, :])

    dk_rows = _row_offsets(video_k, k_frame, token_k, head_k, stride_dkb, stride_dkf, stride_dkn, stride_dkh, ALIGN)
    dv_rows = _row_offsets(video_k, k_frame, token_k, head_k, stride_dvb, stride_dvf, stride_dvn, stride_dvh, ALIGN)
    kv_mask = k_valid[:, None] & dim_ok[None, :]
    tl.store(DK + dk_rows[:, None] + dims[None, :] * stride_dkd, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + dv_rows[:, None] + dims[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _temporal_attention_backward_dq_kernel(
    Q, K, V,               # (B, F, N, H, D) any strides
    Out,                   # (B, F, N, H, D) any strides: the forward's output
    DOut,                  # (B, F, N, H, D) any strides: gradient of the output
    Lse,                   # (B, N, H, F) fp32 contiguous: the forward's LSE
    DQ,                    # (B, F, N, H, D) any strides, written
    stride_qb, stride_qf, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vf, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_of, stride_on, stride_oh, stride_od,
    stride_gb, stride_gf, stride_gn, stride_gh, stride_gd,         # dout
    stride_dqb, stride_dqf, stride_dqn, stride_dqh, stride_dqd,
    num_problems, N, num_heads, num_frames, head_dim, slot, per_group, num_tiles,   # as in the forward
    scale, qk_scale,       # as in the dk/dv kernel
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # elements every row start and D are multiples of (16 B, or 1 if not known)
):
    group, q_tile, dims, dim_ok = _program_tile(num_tiles, head_dim, BLOCK_D, ALIGN)

    q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
        group, q_tile, num_problems, N, num_heads, num_frames, slot, per_group, BLOCK_M)
    q, do, delta, lse_log2 = _load_query_side(
        Q, DOut, Out, Lse, video, q_frame, token, head, q_problem, q_valid, dims, dim_ok, num_frames,
        stride_qb, stride_qf, stride_qn, stride_qh, stride_qd, stride_gb, stride_gf, stride_gn, stride_gh, stride_gd,
        stride_ob, stride_of, stride_on, stride_oh, stride_od, ALIGN)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k_tile in range(0, num_tiles):
        k_member, _, k_valid, _, _, _, k, v = _load_key_tile(
            K, V, group, k_tile, dims, dim_ok, num_problems, N, num_heads, num_frames, slot, per_group,
            stride_kb, stride_kf, stride_kn, stride_kh, stride_kd,
            stride_vb, stride_vf, stride_vn, stride_vh, stride_vd, BLOCK_M, ALIGN)
        probs, dscores = _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid,
                                            k_member, k_valid, qk_scale, DOT_PRECISION)
        dq += _dot(dscores.to(k.dtype), k, DOT_PRECISION)

    dq_rows = _row_offsets(video, q_frame, token, head, stride_dqb, stride_dqf, stride_dqn, stride_dqh, ALIGN)
    tl.store(DQ + dq_rows[:, None] + dims[None, :] * stride_dqd, (dq * scale).to(DQ.dtype.element_ty),
             mask=q_valid[:, None] & dim_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launch configs
# ----------------------------------------------------------------------------------------------
BLOCK_M = 64  # default rows per program: the wgmma M of one warpgroup; F <= BLOCK_M runs as one frame tile

# Tile configs (``_launch.LaunchConfig`` notation) per (pass, arch, operand kind) (``_launch.table_key``)
# and padded head dim BLOCK_D, one each; pass "forward" is the forward kernel, "backward" the dk/dv
# kernel and, when it runs, the dq kernel. A program's query rows and the key rows it scores them
# against are the same packed rows, so the score tile is square (block_n = block_m), and no software
# pipeline runs (s1): each program loads its tiles once (F <= BLOCK_M) or a few times. Wide heads
# spread their fp32 accumulators over more warps.
#
# Every "tensor" entry compiles without a spill stack at the 255-register cap on the oldest (3.6) and
# newest Triton (``python -m vidgen.kernels._aot``; why: docs/DEVELOPING.md). Where 64 rows spilled
# at every warp count -- BLOCK_D = 256 on sm_90 (AnimateDiff's D = 160, padded), the fused backward at
# 64 on sm_80 -- they take 32 rows on mma.sync: these kernels move bytes, not flops (see the module
# docstring), so the narrower MMA costs little and a spill to local memory costs far more.
_TILES = {
    ("forward", 90, "tensor"): {16: "64x64 w4 s1", 32: "64x64 w4 s1", 64: "64x64 w4 s1", 128: "64x64 w8 s1",
                                256: "32x32 w8 s1"},
    ("forward", 80, "tensor"): {16: "64x64 w4 s1", 32: "64x64 w4 s1", 64: "64x64 w4 s1", 128: "64x64 w8 s1",
                                256: "64x64 w16 s1"},
    ("backward", 90, "tensor"): {16: "64x64 w4 s1", 32: "64x64 w4 s1", 64: "64x64 w8 s1", 128: "64x64 w16 s1",
                                 256: "32x32 w8 s1"},
    ("backward", 80, "tensor"): {16: "64x64 w4 s1", 32: "64x64 w4 s1", 64: "32x32 w8 s1", 128: "64x64 w16 s1",
                                 256: "64x64 w16 s1"},
}
_FP32_TILES = {  # CUDA-core products, twice the bytes per element: narrower tiles
    "forward": {16: "64x64 w4 s1", 32: "32x32 w8 s1", 64: "32x32 w8 s1", 128: "32x32 w8 s1", 256: "32x32 w8 s1"},
    "backward": {16: "32x32 w8 s1", 32: "32x32 w8 s1", 64: "32x32 w8 s1", 128: "32x32 w8 s1", 256: "16x16 w8 s1"},
}
_TILES.update({(kernel_pass, arch, "fp32"): rows for kernel_pass, rows in _FP32_TILES.items() for arch in ARCHS})
# Widths whose single-tile backward writes dq from the dk/dv kernel (``FUSE_DQ``), by the backward's
# table key; the others run the dq kernel after it, as every multi-tile backward does.
_FUSED_DQ = {
    ("backward", 90, "tensor"): (16, 32, 64), ("backward", 80, "tensor"): (16, 32, 64, 128),
    ("backward", 90, "fp32"): (16, 32), ("backward", 80, "fp32"): (16, 32),
}
# fp32 stack bytes per thread allowed by (pass, BLOCK_D) (``_launch.FP32_STACK_NOTE``): the largest seen
# on triton 3.6 and 3.9 for any kernel of the width, as in frame attention. Tensor-core entries keep none.
_FP32_STACK: dict[tuple[str, int], int] = {
    ("forward", 128): 296, ("forward", 256): 232, ("backward", 128): 296, ("backward", 256): 232,
}


def block_d(head_dim: int) -> int:
    """Padded head dim (tl.dot needs K >= 16 and power-of-two tiles); masked lanes cost no bytes."""
    return max(16, next_power_of_2(head_dim))


def tile_config(kernel_pass: str, BLOCK_D: int, dtype: str, arch: int) -> LaunchConfig:
    """The tiles of ``kernel_pass`` ("forward", "backward") at padded head dim ``BLOCK_D`` for input
    dtype "fp16", "bf16" or "fp32" and compute capability ``arch``; every one is compiled ahead of time."""
    return LaunchConfig.parse(_TILES[table_key(kernel_pass, arch, dtype)][BLOCK_D])


def fuses_dq(BLOCK_D: int, dtype: str, arch: int) -> bool:
    """Whether the single-tile backward at ``BLOCK_D`` writes dq from the dk/dv kernel (``_FUSED_DQ``)."""
    return BLOCK_D in _FUSED_DQ[table_key("backward", arch, dtype)]


def _uses_wgmma(config: LaunchConfig) -> bool:
    return config.block_m >= 64  # a warpgroup MMA needs 64 rows


class LaunchPlan(NamedTuple):
    """How a (B, F, N, H, D) problem set is packed into programs (see the module docstring)."""
    num_problems: int  # B * N * H
    slot: int          # frames per problem per tile: min(F, block_m)
    per_group: int     # problems per program: block_m // slot
    num_tiles: int     # frame tiles per problem: cdiv(F, slot)
    grid: tuple[int]   # (programs,): one per (problem group, frame tile)


def launch_plan(batch: int, frames: int, tokens: int, heads: int, block_m: int = BLOCK_M) -> LaunchPlan:
    """Packing and 1-D grid of a (B, F, N, H, D) problem set (pure shape logic, no device)."""
    num_problems = batch * tokens * heads
    slot = min(frames, block_m)
    per_group = block_m // slot
    num_tiles = cdiv(frames, slot)
    programs = cdiv(num_problems, per_group) * num_tiles
    check_grid(programs, f"(B, F, N, H) = {(batch, frames, tokens, heads)}")
    return LaunchPlan(num_problems, slot, per_group, num_tiles, (programs,))


def vector_align(head_dim: int, *tensors: torch.Tensor) -> int:
    """The kernels' ``ALIGN``: elements per 16-byte vector when every row of every tensor starts on
    one, else 1 (no hint, still correct).

    Only fp16/bf16 use it (their hot configs; fp32 keeps scalar access and fewer configs). Axes of
    size 1 never advance, so their strides do not count.
    """
    width = 16 // tensors[0].element_size()
    if tensors[0].dtype == torch.float32 or head_dim % width:
        return 1
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return 1
        if any(stride % width for size, stride in zip(t.shape[:-1], t.stride()[:-1]) if size > 1):
            return 1
    return width


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def temporal_attention_forward_triton(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, F, N, H, D) in q's layout when q is dense, lse (B, N, H, F) fp32)."""
    B, F, N, H, D = q.shape
    dtype, BLOCK_D = DTYPE_NAMES[q.dtype], block_d(D)
    cfg = tile_config("forward", BLOCK_D, dtype, device_arch(q.device))
    plan = launch_plan(B, F, N, H, cfg.block_m)
    out = torch.empty_like(q)  # q's layout when q is dense (free view back to the caller's layout)
    lse = torch.empty((B, N, H, F), dtype=torch.float32, device=q.device)
    align = vector_align(D, q, k, v, out) if plan.num_tiles == 1 else 1
    _temporal_attention_forward_kernel[plan.grid](
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        plan.num_problems, N, H, F, D, plan.slot, plan.per_group, plan.num_tiles, scale * LOG2E,
        BLOCK_M=cfg.block_m, BLOCK_D=BLOCK_D, DOT_PRECISION=dot_precision(dtype), ALIGN=align,
        **cfg.launch_options)
    return out, lse


def temporal_attention_backward_triton(dout, q, k, v, out, lse, scale: float
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each in its input's layout when dense. One launch (dq fused into the dk/dv
    kernel) for a single frame tile at a width of ``_FUSED_DQ``, else dk/dv then dq."""
    B, F, N, H, D = q.shape
    dtype, arch, BLOCK_D = DTYPE_NAMES[q.dtype], device_arch(q.device), block_d(D)
    cfg = tile_config("backward", BLOCK_D, dtype, arch)
    plan = launch_plan(B, F, N, H, cfg.block_m)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    fuse_dq = plan.num_tiles == 1 and fuses_dq(BLOCK_D, dtype, arch)
    align = vector_align(D, q, k, v, out, dout, dq, dk, dv) if fuse_dq else 1
    sizes = (plan.num_problems, N, H, F, D, plan.slot, plan.per_group, plan.num_tiles, scale, scale * LOG2E)
    constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_D=BLOCK_D, DOT_PRECISION=dot_precision(dtype), ALIGN=align)
    _temporal_attention_backward_dkdv_kernel[plan.grid](
        q, k, v, out, dout, lse, dq, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), *dk.stride(),
        *dv.stride(), *sizes, FUSE_DQ=fuse_dq, **constexprs, **cfg.launch_options)
    if not fuse_dq:
        _temporal_attention_backward_dq_kernel[plan.grid](
            q, k, v, out, dout, lse, dq,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(),
            *sizes, **constexprs, **cfg.launch_options)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (kernel, dtype, BLOCK_D) the launchers can pick.
# ----------------------------------------------------------------------------------------------
# Argument kinds (``_launch.kernel_signature``): the pointers come first, in the input dtype but lse
# (fp32); after them the two scales are fp32, the problem count int64, every other argument int32.
_SCALES = {"scale", "qk_scale"}


def aot_specs() -> list[KernelSpec]:
    """Every launchable config, for the archs whose table lists it. ALIGN > 1 (16-byte rows) exists
    for fp16/bf16 on the single-tile paths only: the forward at F <= its rows and the fused backward.

    The strides along D (``stride_*d``) are compiled as the constant 1 a launch on projection outputs
    passes (Triton turns an integer argument equal to 1 into a constant, and only then knows the
    rows are contiguous and can vectorise them): the code that runs, not a variant with a
    runtime D stride that only transposed heads reach.
    """
    specs = []

    def add(kernel, kernel_pass, dtype, arch, constexprs, cfg):
        signature = kernel_signature(kernel, dtype, fp32_pointers={"Lse"}, fp32_scalars=_SCALES,
                                     int64_scalars={"num_problems"})
        unit_strides = {name: 1 for name in signature if name.startswith("stride_") and name.endswith("d")}
        signature.update({name: "constexpr" for name in unit_strides})
        stack = stack_allowance(kernel_pass, arch, dtype, constexprs["BLOCK_D"], fp32_stack=_FP32_STACK)
        specs.append((attention_spec(__name__, kernel, signature, {**constexprs, **unit_strides}, cfg,
                                     expect_wgmma=dtype != "fp32" and _uses_wgmma(cfg), stack=stack), arch))

    for dtype, arch in itertools.product(("fp32", "fp16", "bf16"), ARCHS[::-1]):  # the compile table's order
        aligns = (1,) if dtype == "fp32" else (1, 16 // TORCH_DTYPES[dtype].itemsize)
        for BLOCK_D in _TILES[table_key("forward", arch, dtype)]:
            fwd, bwd = tile_config("forward", BLOCK_D, dtype, arch), tile_config("backward", BLOCK_D, dtype, arch)
            fwd_consts = {"BLOCK_M": fwd.block_m, "BLOCK_D": BLOCK_D, "DOT_PRECISION": dot_precision(dtype)}
            bwd_consts = {**fwd_consts, "BLOCK_M": bwd.block_m}
            for align in aligns:
                add(_temporal_attention_forward_kernel, "forward", dtype, arch, {**fwd_consts, "ALIGN": align}, fwd)
                if fuses_dq(BLOCK_D, dtype, arch):
                    add(_temporal_attention_backward_dkdv_kernel, "backward", dtype, arch,
                        {**bwd_consts, "ALIGN": align, "FUSE_DQ": True}, bwd)
            add(_temporal_attention_backward_dkdv_kernel, "backward", dtype, arch,
                {**bwd_consts, "ALIGN": 1, "FUSE_DQ": False}, bwd)
            add(_temporal_attention_backward_dq_kernel, "backward", dtype, arch, {**bwd_consts, "ALIGN": 1}, bwd)
    return merge_archs(specs)
