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

The forward reads q, k, v once (per frame tile) and writes out once, plus the log-sum-exp of
each row's scaled scores (natural log, (B, N, H, F) fp32) that the backward uses to rebuild the
probabilities. The backward reads q, k, v, out, dout once and writes dq, dk, dv once (one frame
tile; longer sequences take a dk/dv kernel and a dq kernel). The grid is one-dimensional (no
65,535 limit) and element offsets are int64. Head dims are padded to a power of two >= 16 in
registers only (masked lanes move no bytes); when every row of every tensor starts on 16 bytes
(``ALIGN``: D = 40/80/160 in fp16 from a UNet projection) the loads and stores are 128-bit.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._aot import MAX_REGISTERS, KernelSpec

MAX_HEAD_DIM = 256
_LOG2E = math.log2(math.e)


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


def temporal_attention_backward_reference(grad_out, q, k, v, lse, scale: float):
    """(dq, dk, dv) of :func:`temporal_attention_reference` from its saved ``lse``."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qp, kp, vp, dop = (_problem_major(t, compute) for t in (q, k, v, grad_out))
    probs = torch.exp((qp @ kp.transpose(-1, -2)) * scale - lse.to(compute).unsqueeze(-1))
    dv = probs.transpose(-1, -2) @ dop
    dprobs = dop @ vp.transpose(-1, -2)
    dscores = probs * (dprobs - (probs * dprobs).sum(-1, keepdim=True))
    dq = (dscores @ kp) * scale
    dk = (dscores.transpose(-1, -2) @ qp) * scale
    return tuple(g.permute(0, 3, 1, 2, 4).to(q.dtype) for g in (dq, dk, dv))


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _locate_rows(group, tile, num_problems, N, H, F, slot, per_group, BLOCK_M: tl.constexpr):
    """Which (problem, frame) each of a program's BLOCK_M rows holds, and whether it is real.

    Row r is frame ``tile * slot + r % slot`` of problem ``group * per_group + r // slot``.
    """
    rows = tl.arange(0, BLOCK_M)
    member = rows // slot
    frame = tile * slot + rows % slot
    problem = group * per_group + member          # int64: group is int64
    valid = (member < per_group) & (frame < F) & (problem < num_problems)
    head = problem % H
    token = (problem // H) % N
    video = problem // (H * N)
    return member, frame, problem, valid, video, token, head


@triton.jit
def _row_offsets(video, frame, token, head, s_b, s_f, s_n, s_h, ALIGN: tl.constexpr):
    offsets = video * s_b + frame * s_f + token * s_n + head * s_h
    if ALIGN > 1:  # the launcher checked every row start is a whole 16-byte vector: vectorised access
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit
def _program_tile(num_tiles, D, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """This program's problem group and frame tile, the head-dim offsets and their mask."""
    pid = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = (dims // ALIGN) < (D // ALIGN)  # == dims < D (ALIGN divides D), mask constant per vector
    return pid // num_tiles, pid % num_tiles, dims, dim_ok


@triton.jit
def _load_key_tile(k_ptr, v_ptr, group, tile, dims, dim_ok, num_problems, N, H, F, slot, per_group,
                   s_kb, s_kf, s_kn, s_kh, s_kd, s_vb, s_vf, s_vn, s_vh, s_vd,
                   BLOCK_M: tl.constexpr, ALIGN: tl.constexpr):
    """The k and v rows of frame tile ``tile`` (zero where not real) and where each row lives."""
    member, frame, problem, valid, video, token, head = _locate_rows(
        group, tile, num_problems, N, H, F, slot, per_group, BLOCK_M)
    mask = valid[:, None] & dim_ok[None, :]
    k_rows = _row_offsets(video, frame, token, head, s_kb, s_kf, s_kn, s_kh, ALIGN)
    v_rows = _row_offsets(video, frame, token, head, s_vb, s_vf, s_vn, s_vh, ALIGN)
    k = tl.load(k_ptr + k_rows[:, None] + dims[None, :] * s_kd, mask=mask, other=0.0)
    v = tl.load(v_ptr + v_rows[:, None] + dims[None, :] * s_vd, mask=mask, other=0.0)
    return member, frame, valid, video, token, head, k, v


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 inputs keep full precision (tf32 would cost ~1e-3); fp16/bf16 take the tensor cores.
    if IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _temporal_attention_fwd_kernel(
    q_ptr,            # (B, F, N, H, D) any strides
    k_ptr,            # (B, F, N, H, D) any strides
    v_ptr,            # (B, F, N, H, D) any strides
    out_ptr,          # (B, F, N, H, D) any strides, written
    lse_ptr,          # (B, N, H, F) fp32 contiguous, written: natural-log LSE of scaled scores
    s_qb, s_qf, s_qn, s_qh, s_qd,
    s_kb, s_kf, s_kn, s_kh, s_kd,
    s_vb, s_vf, s_vn, s_vh, s_vd,
    s_ob, s_of, s_on, s_oh, s_od,
    num_problems,     # B * N * H
    N, H, F, D,
    slot,             # frames per problem per tile: min(F, BLOCK_M)
    per_group,        # problems per program: BLOCK_M // slot
    num_tiles,        # cdiv(F, slot)
    scale_log2,       # scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
    ALIGN: tl.constexpr,    # elements every row start and D are multiples of (16 B, or 1 if not known)
):
    group, q_tile, dims, dim_ok = _program_tile(num_tiles, D, BLOCK_D, ALIGN)

    q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
        group, q_tile, num_problems, N, H, F, slot, per_group, BLOCK_M)
    q_rows = _row_offsets(video, q_frame, token, head, s_qb, s_qf, s_qn, s_qh, ALIGN)
    q_mask = q_valid[:, None] & dim_ok[None, :]
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :] * s_qd, mask=q_mask, other=0.0)

    # Finite start so rows without a key (padding) never produce inf - inf.
    row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k_tile in range(0, num_tiles):
        k_member, _, k_valid, _, _, _, k, v = _load_key_tile(
            k_ptr, v_ptr, group, k_tile, dims, dim_ok, num_problems, N, H, F, slot, per_group,
            s_kb, s_kf, s_kn, s_kh, s_kd, s_vb, s_vf, s_vn, s_vh, s_vd, BLOCK_M, ALIGN)

        scores = _dot(q, tl.trans(k), IEEE) * scale_log2                       # (BLOCK_M, BLOCK_M)
        same_problem = (q_member[:, None] == k_member[None, :]) & k_valid[None, :]
        scores = tl.where(same_problem, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, IEEE)
        row_max = new_max

    row_sum = tl.where(q_valid, row_sum, 1.0)
    out = acc / row_sum[:, None]
    o_rows = _row_offsets(video, q_frame, token, head, s_ob, s_of, s_on, s_oh, ALIGN)
    tl.store(out_ptr + o_rows[:, None] + dims[None, :] * s_od, out.to(out_ptr.dtype.element_ty), mask=q_mask)
    lse = (row_max + tl.log2(row_sum)) * 0.6931471805599453
    tl.store(lse_ptr + q_problem * F + q_frame, lse, mask=q_valid)


@triton.jit
def _load_query_side(q_ptr, do_ptr, o_ptr, lse_ptr, video, frame, token, head, problem, valid, dims, dim_ok, F,
                     s_qb, s_qf, s_qn, s_qh, s_qd, s_gb, s_gf, s_gn, s_gh, s_gd,
                     s_ob, s_of, s_on, s_oh, s_od, ALIGN: tl.constexpr):
    """q, dout, the LSE in log2 units of the scaled scores and delta = rowsum(dout * out)."""
    mask = valid[:, None] & dim_ok[None, :]
    q_rows = _row_offsets(video, frame, token, head, s_qb, s_qf, s_qn, s_qh, ALIGN)
    g_rows = _row_offsets(video, frame, token, head, s_gb, s_gf, s_gn, s_gh, ALIGN)
    o_rows = _row_offsets(video, frame, token, head, s_ob, s_of, s_on, s_oh, ALIGN)
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :] * s_qd, mask=mask, other=0.0)
    do = tl.load(do_ptr + g_rows[:, None] + dims[None, :] * s_gd, mask=mask, other=0.0)
    o = tl.load(o_ptr + o_rows[:, None] + dims[None, :] * s_od, mask=mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse_log2 = tl.load(lse_ptr + problem * F + frame, mask=valid, other=0.0) * 1.4426950408889634
    return q, do, delta, lse_log2


@triton.jit
def _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid, k_member, k_valid, scale_log2,
                       IEEE: tl.constexpr):
    """P = exp(scale q k^T - lse) and dS = P * (dO v^T - delta), zero off each problem's block."""
    scores = _dot(q, tl.trans(k), IEEE) * scale_log2
    block = (q_member[:, None] == k_member[None, :]) & q_valid[:, None] & k_valid[None, :]
    probs = tl.where(block, tl.exp2(scores - lse_log2[:, None]), 0.0)
    dprobs = _dot(do, tl.trans(v), IEEE)
    dscores = probs * (dprobs - delta[:, None])
    return probs, dscores


@triton.jit
def _temporal_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr,   # (B, F, N, H, D) any strides
    o_ptr,                 # (B, F, N, H, D) any strides: the forward's output
    do_ptr,                # (B, F, N, H, D) any strides: gradient of the output
    lse_ptr,               # (B, N, H, F) fp32 contiguous: the forward's LSE
    dq_ptr, dk_ptr, dv_ptr,  # (B, F, N, H, D) any strides, written (dq only when FUSE_DQ)
    s_qb, s_qf, s_qn, s_qh, s_qd,
    s_kb, s_kf, s_kn, s_kh, s_kd,
    s_vb, s_vf, s_vn, s_vh, s_vd,
    s_ob, s_of, s_on, s_oh, s_od,
    s_gb, s_gf, s_gn, s_gh, s_gd,
    s_dqb, s_dqf, s_dqn, s_dqh, s_dqd,
    s_dkb, s_dkf, s_dkn, s_dkh, s_dkd,
    s_dvb, s_dvf, s_dvn, s_dvh, s_dvd,
    num_problems, N, H, F, D, slot, per_group, num_tiles,
    scale,                 # softmax scale
    scale_log2,            # scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
    ALIGN: tl.constexpr,    # elements every row start and D are multiples of (16 B, or 1 if not known)
    FUSE_DQ: tl.constexpr,  # one frame tile: this program sees every score of its problems
):
    group, k_tile, dims, dim_ok = _program_tile(num_tiles, D, BLOCK_D, ALIGN)
    k_member, k_frame, k_valid, video_k, token_k, head_k, k, v = _load_key_tile(
        k_ptr, v_ptr, group, k_tile, dims, dim_ok, num_problems, N, H, F, slot, per_group,
        s_kb, s_kf, s_kn, s_kh, s_kd, s_vb, s_vf, s_vn, s_vh, s_vd, BLOCK_M, ALIGN)

    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for q_tile in range(0, num_tiles):
        q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
            group, q_tile, num_problems, N, H, F, slot, per_group, BLOCK_M)
        q, do, delta, lse_log2 = _load_query_side(
            q_ptr, do_ptr, o_ptr, lse_ptr, video, q_frame, token, head, q_problem, q_valid, dims, dim_ok, F,
            s_qb, s_qf, s_qn, s_qh, s_qd, s_gb, s_gf, s_gn, s_gh, s_gd,
            s_ob, s_of, s_on, s_oh, s_od, ALIGN)
        probs, dscores = _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid,
                                            k_member, k_valid, scale_log2, IEEE)
        dv += _dot(tl.trans(probs.to(do.dtype)), do, IEEE)
        dk += _dot(tl.trans(dscores.to(q.dtype)), q, IEEE)
        if FUSE_DQ:
            dq = _dot(dscores.to(k.dtype), k, IEEE) * scale
            dq_rows = _row_offsets(video, q_frame, token, head, s_dqb, s_dqf, s_dqn, s_dqh, ALIGN)
            tl.store(dq_ptr + dq_rows[:, None] + dims[None, :] * s_dqd, dq.to(dq_ptr.dtype.element_ty),
                     mask=q_valid[:, None] & dim_ok[None, :])

    dk_rows = _row_offsets(video_k, k_frame, token_k, head_k, s_dkb, s_dkf, s_dkn, s_dkh, ALIGN)
    dv_rows = _row_offsets(video_k, k_frame, token_k, head_k, s_dvb, s_dvf, s_dvn, s_dvh, ALIGN)
    kv_mask = k_valid[:, None] & dim_ok[None, :]
    tl.store(dk_ptr + dk_rows[:, None] + dims[None, :] * s_dkd, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + dv_rows[:, None] + dims[None, :] * s_dvd, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _temporal_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr,   # (B, F, N, H, D) any strides
    o_ptr,                 # (B, F, N, H, D) any strides: the forward's output
    do_ptr,                # (B, F, N, H, D) any strides: gradient of the output
    lse_ptr,               # (B, N, H, F) fp32 contiguous: the forward's LSE
    dq_ptr,                # (B, F, N, H, D) any strides, written
    s_qb, s_qf, s_qn, s_qh, s_qd,
    s_kb, s_kf, s_kn, s_kh, s_kd,
    s_vb, s_vf, s_vn, s_vh, s_vd,
    s_ob, s_of, s_on, s_oh, s_od,
    s_gb, s_gf, s_gn, s_gh, s_gd,
    s_dqb, s_dqf, s_dqn, s_dqh, s_dqd,
    num_problems, N, H, F, D, slot, per_group, num_tiles,
    scale, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
    ALIGN: tl.constexpr,    # elements every row start and D are multiples of (16 B, or 1 if not known)
):
    group, q_tile, dims, dim_ok = _program_tile(num_tiles, D, BLOCK_D, ALIGN)

    q_member, q_frame, q_problem, q_valid, video, token, head = _locate_rows(
        group, q_tile, num_problems, N, H, F, slot, per_group, BLOCK_M)
    q, do, delta, lse_log2 = _load_query_side(
        q_ptr, do_ptr, o_ptr, lse_ptr, video, q_frame, token, head, q_problem, q_valid, dims, dim_ok, F,
        s_qb, s_qf, s_qn, s_qh, s_qd, s_gb, s_gf, s_gn, s_gh, s_gd,
        s_ob, s_of, s_on, s_oh, s_od, ALIGN)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k_tile in range(0, num_tiles):
        k_member, _, k_valid, _, _, _, k, v = _load_key_tile(
            k_ptr, v_ptr, group, k_tile, dims, dim_ok, num_problems, N, H, F, slot, per_group,
            s_kb, s_kf, s_kn, s_kh, s_kd, s_vb, s_vf, s_vn, s_vh, s_vd, BLOCK_M, ALIGN)
        probs, dscores = _probs_and_dscores(q, k, v, do, delta, lse_log2, q_member, q_valid,
                                            k_member, k_valid, scale_log2, IEEE)
        dq += _dot(dscores.to(k.dtype), k, IEEE)

    dq_rows = _row_offsets(video, q_frame, token, head, s_dqb, s_dqf, s_dqn, s_dqh, ALIGN)
    tl.store(dq_ptr + dq_rows[:, None] + dims[None, :] * s_dqd, (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=q_valid[:, None] & dim_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
BLOCK_M = 64  # default rows per program: the wgmma M of one warpgroup; F <= BLOCK_M runs as one frame tile


class _Config(NamedTuple):
    fwd_block_m: int
    fwd_warps: int   # wide heads spread their fp32 accumulators over more warps
    bwd_block_m: int
    bwd_warps: int
    fuse_dq: bool    # the single-tile backward writes dq too (else dq gets its own kernel)

    @property
    def bwd_wgmma(self) -> bool:
        return self.bwd_block_m >= 64  # a warpgroup MMA needs 64 rows


# Tiles by (arch, BLOCK_D), fp16/bf16. Every entry compiles without a spill stack at the 255-register
# cap on the oldest (3.6) and newest Triton (``python -m vidgen.kernels._aot``; a spill on Hopper with
# triton 3.6 went with wrong values in frame attention). Where 64 rows spilled at every warp count --
# BLOCK_D = 256 on sm_90 (AnimateDiff's 1280-channel levels: D = 160 padded; the 16-byte-row forward
# kept 8 B even at 16 warps), the fused backward at 64 on sm_80 -- they take 32 rows on mma.sync: these
# kernels move bytes, not flops (see the module docstring), so the narrower MMA costs little and a
# spill to local memory costs far more.
_CONFIGS = {
    90: {16: _Config(64, 4, 64, 4, True), 32: _Config(64, 4, 64, 4, True), 64: _Config(64, 4, 64, 8, True),
         128: _Config(64, 8, 64, 16, False), 256: _Config(32, 8, 32, 8, False)},
    80: {16: _Config(64, 4, 64, 4, True), 32: _Config(64, 4, 64, 4, True), 64: _Config(64, 4, 32, 8, True),
         128: _Config(64, 8, 64, 16, True), 256: _Config(64, 16, 64, 16, False)},
}
# fp32 (CUDA-core products, twice the bytes per element): narrower tiles; a small stack remains at
# wide heads, allowed per entry (``_FP32_STACK``).
_FP32_CONFIGS = {16: _Config(64, 4, 32, 8, True), 32: _Config(32, 8, 32, 8, True), 64: _Config(32, 8, 32, 8, False),
                 128: _Config(32, 8, 32, 8, False), 256: _Config(32, 8, 16, 8, False)}
_CONFIGS_FP32 = {90: _FP32_CONFIGS, 80: _FP32_CONFIGS}
# BLOCK_D -> stack bytes per thread allowed (largest seen on triton 3.6 and 3.9, any kernel of the width):
# the fp32 dot keeps its operand rows in registers across D, as in frame attention.
_FP32_STACK: dict[int, int] = {128: 296, 256: 232}


def config_for(dtype: torch.dtype, head_dim: int, arch: int = 90) -> tuple[int, _Config]:
    """(BLOCK_D, config) the launchers use for this dtype, head dim and compute capability."""
    BLOCK_D = block_d(head_dim)
    table = _CONFIGS_FP32 if dtype == torch.float32 else _CONFIGS
    return BLOCK_D, table[90 if arch >= 90 else 80][BLOCK_D]


def _arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 90  # the interpreter: any table entry runs
    return 90 if torch.cuda.get_device_capability(device)[0] >= 9 else 80


_NUM_STAGES = 1  # no software pipeline: each program loads its tiles once (F <= 64) or a few times
_GRID_LIMIT = 2**31 - 1


def block_d(head_dim: int) -> int:
    """Padded head dim (tl.dot needs K >= 16 and power-of-two tiles); masked lanes cost no bytes."""
    return max(16, triton.next_power_of_2(head_dim))


def launch_plan(batch: int, frames: int, tokens: int, heads: int, block_m: int = BLOCK_M) -> dict:
    """Packing and 1-D grid of a (B, F, N, H, D) problem set (pure shape logic, no device)."""
    num_problems = batch * tokens * heads
    slot = min(frames, block_m)
    per_group = block_m // slot
    num_tiles = triton.cdiv(frames, slot)
    programs = triton.cdiv(num_problems, per_group) * num_tiles
    if programs > _GRID_LIMIT:
        raise ValueError(f"(B, F, N, H) = {(batch, frames, tokens, heads)} needs {programs} programs; "
                         f"the limit is 2**31 - 1")
    return {"num_problems": num_problems, "slot": slot, "per_group": per_group, "num_tiles": num_tiles,
            "grid": (programs,)}


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def vector_width(head_dim: int, *tensors: torch.Tensor) -> int:
    """Elements per 16-byte vector when every row of every tensor starts on one (ALIGN), else 1.

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


def temporal_attention_fwd_triton(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, F, N, H, D = q.shape
    BLOCK_D, config = config_for(q.dtype, D, _arch(q.device))
    plan = launch_plan(B, F, N, H, config.fwd_block_m)
    out = torch.empty_like(q)  # q's layout when q is dense (free view back to the caller's layout)
    lse = torch.empty((B, N, H, F), dtype=torch.float32, device=q.device)
    align = vector_width(D, q, k, v, out) if plan["num_tiles"] == 1 else 1
    _temporal_attention_fwd_kernel[plan["grid"]](
        q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        plan["num_problems"], N, H, F, D, plan["slot"], plan["per_group"], plan["num_tiles"], scale * _LOG2E,
        BLOCK_M=config.fwd_block_m, BLOCK_D=BLOCK_D, IEEE=q.dtype == torch.float32, ALIGN=align,
        num_warps=config.fwd_warps, num_stages=_NUM_STAGES, maxnreg=MAX_REGISTERS,
    )
    return out, lse


def temporal_attention_bwd_triton(grad_out, q, k, v, out, lse, scale: float):
    B, F, N, H, D = q.shape
    BLOCK_D, config = config_for(q.dtype, D, _arch(q.device))
    plan = launch_plan(B, F, N, H, config.bwd_block_m)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    fuse_dq = plan["num_tiles"] == 1 and config.fuse_dq
    align = vector_width(D, q, k, v, out, grad_out, dq, dk, dv) if fuse_dq else 1
    shape_args = (plan["num_problems"], N, H, F, D, plan["slot"], plan["per_group"], plan["num_tiles"],
                  scale, scale * _LOG2E)
    common = dict(BLOCK_M=config.bwd_block_m, BLOCK_D=BLOCK_D, IEEE=q.dtype == torch.float32, ALIGN=align,
                  num_warps=config.bwd_warps, num_stages=_NUM_STAGES, maxnreg=MAX_REGISTERS)
    _temporal_attention_bwd_dkdv_kernel[plan["grid"]](
        q, k, v, out, grad_out, lse, dq, dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out),
        *_strides(dq), *_strides(dk), *_strides(dv), *shape_args, FUSE_DQ=fuse_dq, **common)
    if not fuse_dq:
        _temporal_attention_bwd_dq_kernel[plan["grid"]](
            q, k, v, out, grad_out, lse, dq,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out), *_strides(dq),
            *shape_args, **common)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (kernel, dtype, BLOCK_D) the launchers can pick.
# ----------------------------------------------------------------------------------------------
def _signature(kernel, dtype: str) -> dict[str, str]:
    """Triton types of ``kernel``'s arguments: pointers are ``*_ptr``, constexprs are annotated."""
    def kind(param: inspect.Parameter) -> str:
        if param.annotation is not inspect.Parameter.empty:
            return "constexpr"
        if param.name.endswith("_ptr"):
            return "*fp32" if param.name == "lse_ptr" else f"*{dtype}"
        if param.name.startswith("scale"):
            return "fp32"
        return "i64" if param.name == "num_problems" else "i32"

    return {name: kind(p) for name, p in inspect.signature(kernel.fn).parameters.items()}


def aot_specs() -> list[KernelSpec]:
    """Every launchable config, for the archs whose table lists it. ALIGN > 1 (16-byte rows) exists
    for fp16/bf16 on the single-tile paths only: the forward at F <= its rows and the fused backward.

    The strides along D (``s_*d``) are compiled as the constant 1 a launch on projection outputs
    passes (Triton turns an integer argument equal to 1 into a constant, and only then knows the
    rows are contiguous and can vectorise them): the code that runs, not a variant with a
    runtime D stride that only transposed heads reach.
    """
    specs: dict[tuple, tuple[KernelSpec, list[int]]] = {}

    def add(kernel, dtype, consts, num_warps, arch, wgmma):
        signature = _signature(kernel, dtype)
        unit_strides = {name: 1 for name in signature if name.startswith("s_") and name.endswith("d")}
        signature.update({name: "constexpr" for name in unit_strides})
        max_stack = _FP32_STACK.get(consts["BLOCK_D"], 0) if dtype == "fp32" else 0
        spec = KernelSpec(module=__name__, kernel=kernel.fn.__name__, signature=signature,
                          constexprs={**consts, **unit_strides}, num_warps=num_warps, num_stages=_NUM_STAGES,
                          maxnreg=MAX_REGISTERS, expect_wgmma=dtype != "fp32" and wgmma, max_stack=max_stack,
                          stack_note="fp32 CUDA-core products at a wide head" if max_stack else "")
        specs.setdefault((spec.label, spec.expect_wgmma, max_stack), (spec, []))[1].append(arch)

    for dtype, arch in itertools.product(("fp32", "fp16", "bf16"), (90, 80)):
        aligned = (1,) if dtype == "fp32" else (1, 8)
        table = (_CONFIGS_FP32 if dtype == "fp32" else _CONFIGS)[arch]
        for BLOCK_D, config in table.items():
            fwd = {"BLOCK_M": config.fwd_block_m, "BLOCK_D": BLOCK_D, "IEEE": dtype == "fp32"}
            bwd = {**fwd, "BLOCK_M": config.bwd_block_m}
            for align in aligned:
                add(_temporal_attention_fwd_kernel, dtype, {**fwd, "ALIGN": align}, config.fwd_warps, arch,
                    config.fwd_block_m >= 64)
                if config.fuse_dq:
                    add(_temporal_attention_bwd_dkdv_kernel, dtype, {**bwd, "ALIGN": align, "FUSE_DQ": True},
                        config.bwd_warps, arch, config.bwd_wgmma)
            add(_temporal_attention_bwd_dkdv_kernel, dtype, {**bwd, "ALIGN": 1, "FUSE_DQ": False}, config.bwd_warps,
                arch, config.bwd_wgmma)
            add(_temporal_attention_bwd_dq_kernel, dtype, {**bwd, "ALIGN": 1}, config.bwd_warps, arch,
                config.bwd_wgmma)
    return [dataclasses.replace(spec, archs=tuple(sorted(archs))) for spec, archs in specs.values()]
