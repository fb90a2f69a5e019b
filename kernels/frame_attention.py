"""Frame-sparse attention (METHODS.md section 1): each query frame attends to the keys of a few frames.

Shapes: ``q`` (B, F, N, H, D); ``k``, ``v`` (B, F, M, H, D), any strides with unit stride on D;
``out`` (B, F, N, H, D) contiguous; ``lse`` (B, F, H, N) fp32, the natural-log log-sum-exp of
each query row's scaled scores. The key-frame table is prepared once (:func:`prepare_key_table`):
``table`` (F, K) int32 lists the *distinct* key frames of query frame f in its first ``counts[f]``
entries, so a frame listed twice is visited once.

Kernels (none of them gathers or concatenates K or V):

* forward: one program per (query block, frame, head, video); online softmax over the key
  blocks of every distinct key frame of its row of ``table``; stores ``out`` and ``lse`` only.
* backward dq: same grid, recomputes P from ``lse``; also stores ``delta = rowsum(dout * out)``.
* backward dk/dv: one program per (key block, key frame, head, video), looping over the query
  frames that read that key frame (the reverse table, :func:`reverse_key_table`). Each program
  owns its dk/dv block, so frame 0 -- read by every query frame -- is accumulated in registers
  without atomics: the result is race-free and bit-deterministic by construction.

Head dims (any D in 8..256). ``tl.dot`` needs power-of-two widths >= 16, and padding D to the
next power of two wastes 60% of the work at SD1.5's D = 40 (FlashAttention pads it to 64). Here
D is covered by a power-of-two block plus, where it pays, a second block that *overlaps* the
first instead of running past D (:func:`head_blocks`): D = 40 is columns [0, 32) + [24, 40),
80 = [0, 64) + [64, 80), 160 = [0, 128) + [128, 160): 48 / 80 / 160 columns of work instead of
64 / 128 / 256. Both blocks lie inside the row, so their loads need no column mask (a mask with
a runtime bound that is not a multiple of 16 stops loads from vectorising) and the tail block's
pointer (``X1 = X + D - D1``) keeps 16-byte alignment when D is a multiple of 8. In products
that contract over D (Q K^T, dO V^T) the overlapping columns of one operand -- one loaded once
per program -- are zeroed so they count once; outputs store the overlap from block 0 only.
Other D run one column-masked power-of-two block. That is 8 blockings in all, each compiled
ahead of time for every dtype (``aot_specs``); a finer set (e.g. 96 = 64 + 32) is one more
entry in ``_TAIL_BLOCKS`` and 18 more compiles. Rows of D = 40 are 80 bytes apart: whole 16-byte
vectors, which Triton cannot infer from a stride of 40 elements, so the launcher passes
``ALIGN`` (:func:`vector_align`) and the kernels declare their offsets multiples of it; without
it every load of that blocking is a single element and nothing is staged with cp.async.

fp16/bf16 use tensor cores (wgmma on sm_90) with fp32 accumulation and softmax statistics.
fp32 inputs use exact fp32 (IEEE) products, never tf32: PyTorch's default matmul precision.

Beside this module: :mod:`~vidgen.kernels.frame_attention_tuning` holds the tile configs each
kernel may launch with and picks one (declared candidates, the sweep's measured table, the
autotuning key); :mod:`~vidgen.kernels.frame_attention_fp8` is the FP8 forward.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from . import _autotune
from ._aot import KernelSpec
from ._launch import (ARCHS, DTYPE_NAMES, LOG2E, TORCH_DTYPES, LaunchConfig, attention_spec, cdiv, check_grid,
                      device_arch, dot_precision, kernel_signature, merge_archs, next_power_of_2)
from .frame_attention_tuning import allowed_stack, forward_autotune_key, tile_candidates, tuned_config

MIN_HEAD_DIM, MAX_HEAD_DIM = 8, 256
_INT32_LIMIT = 2**31  # tile offsets within one (video, frame) are int32


# ----------------------------------------------------------------------------------------------
# Key-frame tables
# ----------------------------------------------------------------------------------------------
def sparse_causal_key_frames(num_frames: int) -> list[list[int]]:
    """Tune-A-Video: frame f attends to frames 0 and ``max(f - 1, 0)``."""
    return [[0, max(f - 1, 0)] for f in range(num_frames)]


def first_frame_key_frames(num_frames: int) -> list[list[int]]:
    """Text2Video-Zero / LAMP: every frame attends to frame 0."""
    return [[0] for _ in range(num_frames)]


def full_key_frames(num_frames: int) -> list[list[int]]:
    """Full spatio-temporal attention: every frame attends to all frames."""
    return [list(range(num_frames)) for _ in range(num_frames)]


# The named modes, each the key-frame table of one of the functions above.
FRAME_MODES = ("sparse_causal", "first_frame", "full")
_MODE_TABLES = {"sparse_causal": sparse_causal_key_frames, "first_frame": first_frame_key_frames,
                "full": full_key_frames}


def key_frames_for(mode: str, num_frames: int) -> list[list[int]]:
    """The key-frame table of ``mode`` (one of :data:`FRAME_MODES`) for ``num_frames`` frames."""
    if mode not in FRAME_MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, FRAME_MODES))}, got {mode!r}")
    return _MODE_TABLES[mode](num_frames)


def prepare_key_table(key_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, K) integer table -> (``table`` (F, K) int32, ``counts`` (F,) int32), on its device.

    Row f of ``table`` holds the distinct frames of ``key_frames[f]`` in ascending order in its
    first ``counts[f]`` entries; the remaining entries repeat listed frames (never read by the
    kernels), so the table keeps its shape and a kernel compiled for it is reused.
    """
    ordered = key_frames.to(torch.int64).sort(dim=1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    distinct_first = repeated.to(torch.int8).argsort(dim=1, stable=True)
    table = ordered.gather(1, distinct_first).to(torch.int32)
    return table.contiguous(), (~repeated).sum(dim=1, dtype=torch.int32)


def reverse_key_table(table: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Who reads each key frame: (``readers`` (F, F) int32, ``reader_counts`` (F,) int32).

    ``readers[g, :reader_counts[g]]`` are the query frames whose distinct key frames include
    g, ascending. A frame nobody reads has count 0 (its dk/dv are zero).
    """
    num_frames, width = table.shape
    listed = torch.arange(width, device=table.device)[None, :] < counts[:, None]                # (F, K)
    frames = torch.arange(num_frames, device=table.device, dtype=table.dtype)
    reads = ((table[:, :, None] == frames) & listed[:, :, None]).any(dim=1)                     # (F_q, F_k)
    reads_t = reads.t()
    readers = (~reads_t).to(torch.int8).argsort(dim=1, stable=True).to(torch.int32)
    return readers.contiguous(), reads_t.sum(dim=1, dtype=torch.int32)


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle). It gathers and concatenates the
# keys of each query frame's distinct key frames, as Tune-A-Video does; only the reference may.
# ----------------------------------------------------------------------------------------------
def frame_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_frames,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, F, N, H, D) in q's dtype, lse (B, F, H, N)); math in fp32, or fp64 for fp64 inputs.

    ``key_frames``: (F, K) integer tensor or nested list; duplicates in a row count once.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = key_frames.tolist() if isinstance(key_frames, torch.Tensor) else key_frames
    outs, lses = [], []
    for f, row in enumerate(rows):
        frames = sorted({int(g) for g in row})
        keys = k[:, frames].flatten(1, 2).to(compute).permute(0, 2, 3, 1)    # (B, H, D, |frames| * M)
        values = v[:, frames].flatten(1, 2).to(compute).transpose(1, 2)      # (B, H, |frames| * M, D)
        scores = (q[:, f].to(compute).transpose(1, 2) @ keys) * scale        # (B, H, N, |frames| * M)
        lse = torch.logsumexp(scores, dim=-1)                                # (B, H, N)
        outs.append((torch.exp(scores - lse[..., None]) @ values).transpose(1, 2))  # (B, N, H, D)
        lses.append(lse)
    return torch.stack(outs, dim=1).to(q.dtype), torch.stack(lses, dim=1)


def frame_attention_backward_reference(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                       key_frames, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of :func:`frame_attention_reference`, written out (the kernels' spec).

    With P = softmax(scale Q K_f^T): dV_f = P^T dO, dS = P * (dO V_f^T - rowsum(dO * O)),
    dQ = scale dS K_f, dK_f = scale dS^T Q; key gradients are summed over the query frames
    that read each key frame.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, F, N, H, D = q.shape
    M = k.shape[2]
    rows = key_frames.tolist() if isinstance(key_frames, torch.Tensor) else key_frames
    dq = torch.zeros(q.shape, dtype=compute, device=q.device)
    dk = torch.zeros(k.shape, dtype=compute, device=k.device)
    dv = torch.zeros(v.shape, dtype=compute, device=v.device)
    for f, row in enumerate(rows):
        frames = sorted({int(g) for g in row})
        keys = k[:, frames].flatten(1, 2).to(compute)      # (B, |frames| * M, H, D)
        values = v[:, frames].flatten(1, 2).to(compute)
        qf, dof = q[:, f].to(compute), dout[:, f].to(compute)
        p = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", qf, keys) * scale, dim=-1)
        out = torch.einsum("bhnm,bmhd->bnhd", p, values)
        dp = torch.einsum("bnhd,bmhd->bhnm", dof, values)
        ds = p * (dp - (dof * out).sum(-1).transpose(1, 2)[..., None])
        dq[:, f] = scale * torch.einsum("bhnm,bmhd->bnhd", ds, keys)
        dk[:, frames] += (scale * torch.einsum("bhnm,bnhd->bmhd", ds, qf)).unflatten(1, (len(frames), M))
        dv[:, frames] += torch.einsum("bhnm,bnhd->bmhd", p, dof).unflatten(1, (len(frames), M))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ----------------------------------------------------------------------------------------------
# Head-dim blocking and launch configs
# ----------------------------------------------------------------------------------------------
_TAIL_BLOCKS = {32: 16, 64: 16, 128: 32}  # D0 -> D1 of the overlapped blockings (SD1.5: 40, 80, 160)


def head_blocks(head_dim: int) -> tuple[int, int, bool]:
    """(D0, D1, MASK_D): the column blocks covering D = ``head_dim`` (see the module docstring).

    D0 + D1 with an overlapping tail block when D - D0 <= D1 for the D0 -> D1 pairs listed in
    ``_TAIL_BLOCKS`` (D = 33..48, 65..80, 129..160: SD1.5's 40, 80 and 160 cost 48, 80 and 160
    columns); otherwise one power-of-two block, column-masked when wider than D (8 configs in
    all, each compiled ahead of time for every dtype and arch). A power-of-two D runs the masked
    block too: Triton specialises ints divisible by 16, so ``cols < D`` stays vectorisable.
    """
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    d0 = 1 << (head_dim.bit_length() - 1)
    d1 = _TAIL_BLOCKS.get(d0, 0)
    if d0 == head_dim:
        return max(d0, 16), 0, True
    if d1 and head_dim - d0 <= d1:
        return d0, d1, False
    return 2 * d0, 0, True


# Blockings served with row-alignment hints (``ALIGN`` > 1) in fp16/bf16. Triton learns that rows
# start on 16-byte boundaries only from strides divisible by 16 elements; SD1.5's D = 40 makes the
# head stride 40, so without the hint its loads are single elements and nothing is staged with
# cp.async. Head dims that are multiples of 16 (64, 80, 128, 160) get the same code from Triton's
# own specialisation. Each entry is 8 more ahead-of-time compiles (4 kernels/candidates x 2 dtypes).
_HINTED_BLOCKINGS = {(32, 16)}


def vector_align(d0: int, d1: int, *tensors: torch.Tensor) -> int:
    """The kernels' ``ALIGN``: elements per 16-byte vector when every row of every tensor starts on
    a 16-byte boundary (aligned base; strides and D multiples of the vector), for the blockings in
    ``_HINTED_BLOCKINGS`` and fp16/bf16; otherwise 1 (no hint, still correct)."""
    dtype = tensors[0].dtype
    if (d0, d1) not in _HINTED_BLOCKINGS or dtype not in (torch.float16, torch.bfloat16):
        return 1
    vector = 16 // tensors[0].element_size()
    if tensors[0].shape[-1] % vector:
        return 1
    for t in tensors:
        if t.data_ptr() % 16 or any(stride % vector for stride in t.stride()[:4]):
            return 1
    return vector


# ----------------------------------------------------------------------------------------------
# Triton kernels. Tiles are (rows, columns) of one (video, frame, head); pointers are element
# pointers whose (b, f, h) offset is taken in int64, tile offsets in int32 (the launcher checks
# that one frame's span of every tensor fits). ``X1`` is ``X`` advanced by D - D1 columns: the
# overlapping tail column block; ``overlap = D0 + D1 - D`` of its first columns belong to block 0.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _base_offset(b, stride_b, f, stride_f, h, stride_h, ALIGN: tl.constexpr):
    """Element offset (int64) of one (video, frame, head) slice, declared a multiple of ALIGN elements
    (the launcher checked it, see ``vector_align``). Triton learns alignment only from arguments
    divisible by 16; D = 40 makes the head stride 40, and without the hint every row start looks
    unaligned, so each load is one element and nothing is staged with cp.async. The hint must sit
    on a value computed here (a hint on a function argument is dropped)."""
    offset = b * stride_b + f * stride_f + h * stride_h
    if ALIGN > 1:
        offset = tl.multiple_of(offset, ALIGN)
    return offset


@triton.jit
def _row_offsets(rows, stride, ALIGN: tl.constexpr):
    """``rows * stride``, each a multiple of ALIGN elements (see :func:`_base_offset`)."""
    offsets = rows * stride
    if ALIGN > 1:
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit
def _query_block_program(num_m_blocks, num_frames, num_heads):
    """(query block, frame, head, video) of this program; query blocks of one (video, frame, head)
    are adjacent in launch order, so they read the same keys while those are in cache."""
    pid = tl.program_id(0)
    m_block = pid % num_m_blocks
    rest = pid // num_m_blocks
    f = rest % num_frames
    rest = rest // num_frames
    return m_block, f, (rest % num_heads).to(tl.int64), (rest // num_heads).to(tl.int64)


@triton.jit
def _key_frame_pointers(K, K1, V, V1, b, g, h, stride_kb, stride_kf, stride_kh, stride_vb, stride_vf, stride_vh,
                        ALIGN: tl.constexpr):
    """Pointers to key frame ``g``'s K and V rows of (video b, head h), column blocks 0 and 1."""
    k_off = _base_offset(b, stride_kb, g, stride_kf, h, stride_kh, ALIGN)
    v_off = _base_offset(b, stride_vb, g, stride_vf, h, stride_vh, ALIGN)
    return K + k_off, K1 + k_off, V + v_off, V1 + v_off


@triton.jit
def _load_tile(base, offs_rows, stride_rows, num_rows, offs_cols, head_dim,
               MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr, TRANSPOSE: tl.constexpr, ALIGN: tl.constexpr):
    """A (rows, cols) tile -- (cols, rows) with TRANSPOSE -- zero outside [0, num_rows) x [0, head_dim)."""
    rows = _row_offsets(offs_rows, stride_rows, ALIGN)
    if TRANSPOSE:
        ptrs = base + rows[None, :] + offs_cols[:, None]
        row_ok = offs_rows[None, :] < num_rows
        col_ok = offs_cols[:, None] < head_dim
    else:
        ptrs = base + rows[:, None] + offs_cols[None, :]
        row_ok = offs_rows[:, None] < num_rows
        col_ok = offs_cols[None, :] < head_dim
    # Only the masks a call needs: a runtime column bound would stop loads from vectorising.
    if MASK_ROWS and MASK_D:
        return tl.load(ptrs, mask=row_ok & col_ok, other=0.0)
    if MASK_ROWS:
        return tl.load(ptrs, mask=row_ok, other=0.0)
    if MASK_D:
        return tl.load(ptrs, mask=col_ok, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _forward_key_block(acc0, acc1, m_i, l_i, q0, q1, k_base, k1_base, v_base, v1_base, start_n, M,
                       stride_km, stride_vm, qk_scale, head_dim,
                       D0: tl.constexpr, D1: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr,
                       BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N) of one key frame."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D0)
    kt0 = _load_tile(k_base, offs_n, stride_km, M, offs_d0, head_dim, MASK_N, MASK_D, True, ALIGN)   # (D0, BLOCK_N)
    s = tl.dot(q0, kt0, input_precision=DOT_PRECISION)                                        # (BLOCK_M, BLOCK_N)
    if D1 > 0:
        offs_d1 = tl.arange(0, D1)
        kt1 = _load_tile(k1_base, offs_n, stride_km, M, offs_d1, head_dim, MASK_N, False, True, ALIGN)
        s += tl.dot(q1, kt1, input_precision=DOT_PRECISION)
    s = s * qk_scale  # log2 units
    if MASK_N:
        s = tl.where(offs_n[None, :] < M, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v0 = _load_tile(v_base, offs_n, stride_vm, M, offs_d0, head_dim, MASK_N, MASK_D, False, ALIGN)   # (BLOCK_N, D0)
    acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v0.dtype), v0, input_precision=DOT_PRECISION)
    if D1 > 0:
        v1 = _load_tile(v1_base, offs_n, stride_vm, M, offs_d1, head_dim, MASK_N, False, False, ALIGN)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=DOT_PRECISION)
    return acc0, acc1, m_new, l_i


# Sizes and loop bounds are not specialised on divisibility by 16 (it buys nothing there), so a new
# F, N, M or table width never compiles another variant; strides and head_dim are (vector loads).
_SIZE_ARGS = ["num_frames", "num_heads", "N", "M", "table_width", "num_m_blocks"]


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _frame_attention_forward_kernel(
    Q, Q1,                 # (B, F, N, H, D) any strides, unit stride on D; Q1 = Q + D - D1
    K, K1,                 # (B, F, M, H, D) any strides, unit stride on D
    V, V1,                 # (B, F, M, H, D) any strides, unit stride on D
    Out, Out1,             # (B, F, N, H, D) output
    Lse,                   # (B, F, H, N) fp32 output: natural-log log-sum-exp of the scaled scores
    Table,                 # (F, table_width) int32: distinct key frames first
    Counts,                # (F,) int32: distinct key frames per query frame
    stride_qb, stride_qf, stride_qn, stride_qh,
    stride_kb, stride_kf, stride_km, stride_kh,
    stride_vb, stride_vf, stride_vm, stride_vh,
    stride_ob, stride_of, stride_on, stride_oh,
    num_frames, num_heads, N, M, table_width, num_m_blocks,
    qk_scale,              # scale * log2(e)
    head_dim,              # D
    D0: tl.constexpr, D1: tl.constexpr, MASK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # every row start and D - D1 are multiples of ALIGN elements (1: not known)
):
    m_block, f, h, b = _query_block_program(num_m_blocks, num_frames, num_heads)

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, D0)
    q_off = _base_offset(b, stride_qb, f.to(tl.int64), stride_qf, h, stride_qh, ALIGN)
    q0 = _load_tile(Q + q_off, offs_m, stride_qn, N, offs_d0, head_dim, True, MASK_D, False, ALIGN)  # (BLOCK_M, D0)
    acc0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    q1 = q0   # placeholders when there is no tail block
    acc1 = 0.0
    if D1 > 0:
        offs_d1 = tl.arange(0, D1)
        overlap = D0 + D1 - head_dim
        q1 = _load_tile(Q1 + q_off, offs_m, stride_qn, N, offs_d1, head_dim, True, False, False, ALIGN)
        q1 = tl.where(offs_d1[None, :] >= overlap, q1, 0.0)  # overlapping columns count in block 0 only
        acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    full_n = (M // BLOCK_N) * BLOCK_N
    for j in range(0, tl.load(Counts + f)):
        g = tl.load(Table + f * table_width + j).to(tl.int64)
        k_base, k1_base, v_base, v1_base = _key_frame_pointers(
            K, K1, V, V1, b, g, h, stride_kb, stride_kf, stride_kh, stride_vb, stride_vf, stride_vh, ALIGN)
        for start_n in range(0, full_n, BLOCK_N):
            acc0, acc1, m_i, l_i = _forward_key_block(
                acc0, acc1, m_i, l_i, q0, q1, k_base, k1_base, v_base, v1_base, start_n, M,
                stride_km, stride_vm, qk_scale, head_dim, D0, D1, MASK_D, False, BLOCK_N, DOT_PRECISION, ALIGN)
        if full_n < M:
            acc0, acc1, m_i, l_i = _forward_key_block(
                acc0, acc1, m_i, l_i, q0, q1, k_base, k1_base, v_base, v1_base, full_n, M,
                stride_km, stride_vm, qk_scale, head_dim, D0, D1, MASK_D, True, BLOCK_N, DOT_PRECISION, ALIGN)

    inv_l = 1.0 / l_i
    o_off = _base_offset(b, stride_ob, f.to(tl.int64), stride_of, h, stride_oh, ALIGN)
    o_rows = _row_offsets(offs_m, stride_on, ALIGN)
    rows = offs_m[:, None] < N
    out_ptrs = Out + o_off + o_rows[:, None] + offs_d0[None, :]
    if MASK_D:
        rows = rows & (offs_d0[None, :] < head_dim)
    tl.store(out_ptrs, (acc0 * inv_l[:, None]).to(Out.dtype.element_ty), mask=rows)
    if D1 > 0:
        out1_ptrs = Out1 + o_off + o_rows[:, None] + offs_d1[None, :]
        tl.store(out1_ptrs, (acc1 * inv_l[:, None]).to(Out.dtype.element_ty),
                 mask=(offs_m[:, None] < N) & (offs_d1[None, :] >= overlap))
    lse_off = ((b * num_frames + f) * num_heads + h) * N
    tl.store(Lse + lse_off + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=offs_m < N)  # * ln 2


@triton.jit
def _dq_key_block(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, k1_base, v_base, v1_base, start_n, M,
                  stride_km, stride_vm, qk_scale, head_dim,
                  D0: tl.constexpr, D1: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr,
                  BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIGN: tl.constexpr):
    """dq += dS K over keys [start_n, start_n + BLOCK_N) of one key frame (P recomputed from lse)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D0)
    kt0 = _load_tile(k_base, offs_n, stride_km, M, offs_d0, head_dim, MASK_N, MASK_D, True, ALIGN)    # (D0, BLOCK_N)
    vt0 = _load_tile(v_base, offs_n, stride_vm, M, offs_d0, head_dim, MASK_N, MASK_D, True, ALIGN)    # (D0, BLOCK_N)
    s = tl.dot(q0, kt0, input_precision=DOT_PRECISION)                                         # (BLOCK_M, BLOCK_N)
    dp = tl.dot(do0, vt0, input_precision=DOT_PRECISION)
    if D1 > 0:
        offs_d1 = tl.arange(0, D1)
        kt1 = _load_tile(k1_base, offs_n, stride_km, M, offs_d1, head_dim, MASK_N, False, True, ALIGN)
        vt1 = _load_tile(v1_base, offs_n, stride_vm, M, offs_d1, head_dim, MASK_N, False, True, ALIGN)
        s += tl.dot(q1, kt1, input_precision=DOT_PRECISION)   # q1, do1: overlap zeroed
        dp += tl.dot(do1, vt1, input_precision=DOT_PRECISION)
    p = tl.math.exp2(s * qk_scale - lse2[:, None])
    if MASK_N:
        p = tl.where(offs_n[None, :] < M, p, 0.0)
    ds = (p * (dp - delta[:, None])).to(kt0.dtype)
    dq0 += tl.dot(ds, tl.trans(kt0), input_precision=DOT_PRECISION)
    if D1 > 0:
        dq1 += tl.dot(ds, tl.trans(kt1), input_precision=DOT_PRECISION)
    return dq0, dq1


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _frame_attention_backward_dq_kernel(
    Q, Q1, K, K1, V, V1,   # as in _frame_attention_forward_kernel
    Out, Out1,             # (B, F, N, H, D) forward output, any strides
    DOut, DOut1,           # (B, F, N, H, D) incoming gradient, any strides, unit stride on D
    DQ, DQ1,               # (B, F, N, H, D) output, strided like Out
    Lse,                   # (B, F, H, N) fp32 from the forward
    Delta,                 # (B, F, H, N) fp32 output: rowsum(dout * out), read by the dk/dv kernel
    Table, Counts,         # as in _frame_attention_forward_kernel
    stride_qb, stride_qf, stride_qn, stride_qh,
    stride_kb, stride_kf, stride_km, stride_kh,
    stride_vb, stride_vf, stride_vm, stride_vh,
    stride_ob, stride_of, stride_on, stride_oh,
    stride_gb, stride_gf, stride_gn, stride_gh,   # dout
    stride_db, stride_df, stride_dn, stride_dh,   # dq
    num_frames, num_heads, N, M, table_width, num_m_blocks,
    scale, qk_scale, head_dim,
    D0: tl.constexpr, D1: tl.constexpr, MASK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # every row start and D - D1 are multiples of ALIGN elements (1: not known)
):
    m_block, f, h, b = _query_block_program(num_m_blocks, num_frames, num_heads)
    f64 = f.to(tl.int64)

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, D0)
    q_off = _base_offset(b, stride_qb, f64, stride_qf, h, stride_qh, ALIGN)
    o_off = _base_offset(b, stride_ob, f64, stride_of, h, stride_oh, ALIGN)
    g_off = _base_offset(b, stride_gb, f64, stride_gf, h, stride_gh, ALIGN)
    q0 = _load_tile(Q + q_off, offs_m, stride_qn, N, offs_d0, head_dim, True, MASK_D, False, ALIGN)     # (BLOCK_M, D0)
    do0 = _load_tile(DOut + g_off, offs_m, stride_gn, N, offs_d0, head_dim, True, MASK_D, False, ALIGN)
    o0 = _load_tile(Out + o_off, offs_m, stride_on, N, offs_d0, head_dim, True, MASK_D, False, ALIGN)
    delta = tl.sum(do0.to(tl.float32) * o0.to(tl.float32), 1)
    dq0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    q1 = q0   # placeholders when there is no tail block
    do1 = do0
    dq1 = 0.0
    if D1 > 0:
        offs_d1 = tl.arange(0, D1)
        overlap = D0 + D1 - head_dim
        tail = offs_d1[None, :] >= overlap
        q1 = tl.where(tail, _load_tile(Q1 + q_off, offs_m, stride_qn, N, offs_d1, head_dim, True, False, False, ALIGN), 0.0)
        do1 = _load_tile(DOut1 + g_off, offs_m, stride_gn, N, offs_d1, head_dim, True, False, False, ALIGN)
        do1 = tl.where(tail, do1, 0.0)
        o1 = _load_tile(Out1 + o_off, offs_m, stride_on, N, offs_d1, head_dim, True, False, False, ALIGN)
        delta += tl.sum(do1.to(tl.float32) * o1.to(tl.float32), 1)
        dq1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    row_off = ((b * num_frames + f) * num_heads + h) * N
    tl.store(Delta + row_off + offs_m, delta, mask=offs_m < N)
    lse2 = tl.load(Lse + row_off + offs_m, mask=offs_m < N, other=0.0) * 1.4426950408889634  # log2 e

    full_n = (M // BLOCK_N) * BLOCK_N
    for j in range(0, tl.load(Counts + f)):
        g = tl.load(Table + f * table_width + j).to(tl.int64)
        k_base, k1_base, v_base, v1_base = _key_frame_pointers(
            K, K1, V, V1, b, g, h, stride_kb, stride_kf, stride_kh, stride_vb, stride_vf, stride_vh, ALIGN)
        for start_n in range(0, full_n, BLOCK_N):
            dq0, dq1 = _dq_key_block(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, k1_base, v_base, v1_base,
                                     start_n, M, stride_km, stride_vm, qk_scale, head_dim,
                                     D0, D1, MASK_D, False, BLOCK_N, DOT_PRECISION, ALIGN)
        if full_n < M:
            dq0, dq1 = _dq_key_block(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, k1_base, v_base, v1_base,
                                     full_n, M, stride_km, stride_vm, qk_scale, head_dim,
                                     D0, D1, MASK_D, True, BLOCK_N, DOT_PRECISION, ALIGN)

    d_off = _base_offset(b, stride_db, f64, stride_df, h, stride_dh, ALIGN)
    d_rows = _row_offsets(offs_m, stride_dn, ALIGN)
    rows = offs_m[:, None] < N
    if MASK_D:
        rows = rows & (offs_d0[None, :] < head_dim)
    tl.store(DQ + d_off + d_rows[:, None] + offs_d0[None, :], (dq0 * scale).to(DQ.dtype.element_ty), mask=rows)
    if D1 > 0:
        tl.store(DQ1 + d_off + d_rows[:, None] + offs_d1[None, :], (dq1 * scale).to(DQ.dtype.element_ty),
                 mask=(offs_m[:, None] < N) & (offs_d1[None, :] >= overlap))


@triton.jit(do_not_specialize=["num_frames", "num_heads", "num_videos", "N", "M", "num_n_blocks"])
def _frame_attention_backward_dkdv_kernel(
    Q, Q1, K, K1, V, V1,   # as in _frame_attention_forward_kernel
    DOut, DOut1,           # (B, F, N, H, D) incoming gradient, any strides, unit stride on D
    DK, DK1, DV, DV1,      # (B, F, M, H, D) outputs, contiguous
    Lse, Delta,            # (B, F, H, N) fp32
    Readers,               # (F, F) int32: the query frames reading key frame g, first
    ReaderCounts,          # (F,) int32
    stride_qb, stride_qf, stride_qn, stride_qh,
    stride_kb, stride_kf, stride_km, stride_kh,
    stride_vb, stride_vf, stride_vm, stride_vh,
    stride_gb, stride_gf, stride_gn, stride_gh,   # dout
    stride_db, stride_df, stride_dm, stride_dh,   # dk and dv
    num_frames, num_heads, num_videos, N, M, num_n_blocks,
    scale, qk_scale, head_dim,
    D0: tl.constexpr, D1: tl.constexpr, MASK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,   # every row start and D - D1 are multiples of ALIGN elements (1: not known)
):
    # Key frame slowest in launch order: frame 0 (read by the most query frames) starts first.
    pid = tl.program_id(0)
    n_block = pid % num_n_blocks
    rest = pid // num_n_blocks
    h = (rest % num_heads).to(tl.int64)
    rest = rest // num_heads
    b = (rest % num_videos).to(tl.int64)
    g = rest // num_videos
    g64 = g.to(tl.int64)

    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D0)
    k_off = _base_offset(b, stride_kb, g64, stride_kf, h, stride_kh, ALIGN)
    v_off = _base_offset(b, stride_vb, g64, stride_vf, h, stride_vh, ALIGN)
    k0 = _load_tile(K + k_off, offs_n, stride_km, M, offs_d0, head_dim, True, MASK_D, False, ALIGN)     # (BLOCK_N, D0)
    v0 = _load_tile(V + v_off, offs_n, stride_vm, M, offs_d0, head_dim, True, MASK_D, False, ALIGN)
    dk0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    k1 = k0   # placeholders when there is no tail block
    v1 = v0
    dk1 = 0.0
    dv1 = 0.0
    if D1 > 0:
        offs_d1 = tl.arange(0, D1)
        overlap = D0 + D1 - head_dim
        tail = offs_d1[None, :] >= overlap
        k1 = tl.where(tail, _load_tile(K1 + k_off, offs_n, stride_km, M, offs_d1, head_dim, True, False, False, ALIGN), 0.0)
        v1 = tl.where(tail, _load_tile(V1 + v_off, offs_n, stride_vm, M, offs_d1, head_dim, True, False, False, ALIGN), 0.0)
        dk1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
        dv1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)

    for j in range(0, tl.load(ReaderCounts + g)):
        f = tl.load(Readers + g * num_frames + j).to(tl.int64)
        q_off = _base_offset(b, stride_qb, f, stride_qf, h, stride_qh, ALIGN)
        g_off = _base_offset(b, stride_gb, f, stride_gf, h, stride_gh, ALIGN)
        row_off = ((b * num_frames + f) * num_heads + h) * N
        for start_m in range(0, N, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            # Query rows past N load zeros and lse = +inf, so their P (and dS) is exactly 0.
            qt0 = _load_tile(Q + q_off, offs_m, stride_qn, N, offs_d0, head_dim, True, MASK_D, True, ALIGN)     # (D0, BLOCK_M)
            do0 = _load_tile(DOut + g_off, offs_m, stride_gn, N, offs_d0, head_dim, True, MASK_D, False, ALIGN)  # (BM, D0)
            lse2 = tl.load(Lse + row_off + offs_m, mask=offs_m < N, other=float("inf")) * 1.4426950408889634  # log2 e
            delta = tl.load(Delta + row_off + offs_m, mask=offs_m < N, other=0.0)
            st = tl.dot(k0, qt0, input_precision=DOT_PRECISION)                                  # (BLOCK_N, BLOCK_M)
            dpt = tl.dot(v0, tl.trans(do0), input_precision=DOT_PRECISION)
            if D1 > 0:
                qt1 = _load_tile(Q1 + q_off, offs_m, stride_qn, N, offs_d1, head_dim, True, False, True, ALIGN)
                do1 = _load_tile(DOut1 + g_off, offs_m, stride_gn, N, offs_d1, head_dim, True, False, False, ALIGN)
                st += tl.dot(k1, qt1, input_precision=DOT_PRECISION)    # k1, v1: overlap zeroed
                dpt += tl.dot(v1, tl.trans(do1), input_precision=DOT_PRECISION)
            pt = tl.math.exp2(st * qk_scale - lse2[None, :])
            dv0 += tl.dot(pt.to(do0.dtype), do0, input_precision=DOT_PRECISION)
            dst = (pt * (dpt - delta[None, :])).to(qt0.dtype)
            dk0 += tl.dot(dst, tl.trans(qt0), input_precision=DOT_PRECISION)
            if D1 > 0:
                dv1 += tl.dot(pt.to(do1.dtype), do1, input_precision=DOT_PRECISION)
                dk1 += tl.dot(dst, tl.trans(qt1), input_precision=DOT_PRECISION)

    d_off = _base_offset(b, stride_db, g64, stride_df, h, stride_dh, ALIGN)
    d_rows = _row_offsets(offs_n, stride_dm, ALIGN)
    ptrs0 = d_rows[:, None] + offs_d0[None, :]
    rows = offs_n[:, None] < M
    if MASK_D:
        rows = rows & (offs_d0[None, :] < head_dim)
    tl.store(DK + d_off + ptrs0, (dk0 * scale).to(DK.dtype.element_ty), mask=rows)
    tl.store(DV + d_off + ptrs0, dv0.to(DV.dtype.element_ty), mask=rows)
    if D1 > 0:
        ptrs1 = d_rows[:, None] + offs_d1[None, :]
        tail_rows = (offs_n[:, None] < M) & (offs_d1[None, :] >= overlap)
        tl.store(DK1 + d_off + ptrs1, (dk1 * scale).to(DK.dtype.element_ty), mask=tail_rows)
        tl.store(DV1 + d_off + ptrs1, dv1.to(DV.dtype.element_ty), mask=tail_rows)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """Kernels need unit stride on D only; anything else is a copy, and rare (a transposed head)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _tail(x: torch.Tensor, d1: int) -> torch.Tensor:
    """``x`` advanced to the tail column block (the pointer is all the kernel reads)."""
    return x[..., x.shape[-1] - d1:] if d1 else x


def _check_int32_span(**tensors: torch.Tensor) -> None:
    """Tile offsets within one (video, frame) are int32: refuse a frame whose span reaches 2**31."""
    for name, t in tensors.items():
        span = sum((size - 1) * stride for size, stride in zip(t.shape[2:], t.stride()[2:])) + 1
        if span >= _INT32_LIMIT:
            raise ValueError(f"{name}: one frame spans {span} elements (tokens x heads x D with its strides); "
                             f"the kernels address at most 2**31 - 1 within a frame")


def _measured_config(kernel_pass: str, device: torch.device, width: int, dtype: str, N: int, *,
                     any_size: bool = False) -> LaunchConfig | None:
    """The sweep's measured choice (``kernels/frame_attention_tuned.json``, read by
    ``frame_attention_tuning.tuned_config``) for this GPU's compute capability and N's size bucket -- with
    ``any_size``, else its choice over all sizes -- or None: off CUDA, under ``VIDGEN_AUTOTUNE=0``
    (the reproducible default baseline) and for keys the table lacks, where the launcher's own
    choice runs (the forward's runtime autotuning, the backward's default). Only declared
    candidates ever come back, so a stale table cannot launch an uncompiled config."""
    if device.type != "cuda" or not _autotune.tuning_enabled():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    found = tuned_config(kernel_pass, 10 * major + minor, width, dtype, next_power_of_2(N))
    if found is None and any_size:
        found = tuned_config(kernel_pass, 10 * major + minor, width, dtype, None)
    return found


def _declared(config: LaunchConfig, candidates: tuple[LaunchConfig, ...], kernel_pass: str) -> LaunchConfig:
    """``config`` if it is one of the pass's declared (ahead-of-time compiled) candidates."""
    if config not in candidates:
        raise ValueError(f"config: {config} is not a declared {kernel_pass} candidate for this head width "
                         f"and dtype ({', '.join(map(str, candidates))})")
    return config


def frame_attention_forward_triton(q, k, v, table, counts, scale: float, *,
                                   config: LaunchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, F, N, H, D) contiguous, lse (B, F, H, N) fp32).

    The tile config is autotuned among the forward's ``tile_candidates`` (``kernels/_autotune.py``);
    timing reruns this launch, which is safe because the kernel writes only ``out`` and ``lse``.
    ``config`` runs one of those candidates instead (a sweep; anything else is refused).
    Sizes are unspecialised kernel arguments (``_SIZE_ARGS``), so a new F, N, M or table width
    compiles no candidate again; strides are specialised on divisibility by 16, which a new N
    keeps whenever H x D is a multiple of 16 (every SD/AnimateDiff UNet).
    """
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    B, F, N, H, D = q.shape
    M = k.shape[2]
    d0, d1, mask_d = head_blocks(D)
    dtype, arch = DTYPE_NAMES[q.dtype], device_arch(q.device)
    candidates = tile_candidates("forward", d0 + d1, dtype, arch)
    if config is not None:
        candidates = (_declared(config, candidates, "forward"),)
    elif (measured := _measured_config("forward", q.device, d0 + d1, dtype, N)) is not None:
        candidates = (measured,)  # the sweep's choice for this size: nothing to time
    out = torch.empty((B, F, N, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, F, H, N), dtype=torch.float32, device=q.device)
    _check_int32_span(q=q, k=k, v=v)
    check_grid(cdiv(N, min(cfg.block_m for cfg in candidates)) * F * H * B, "frame_attention")

    def launch(cfg: LaunchConfig) -> None:
        num_m_blocks = cdiv(N, cfg.block_m)
        _frame_attention_forward_kernel[(num_m_blocks * F * H * B,)](
            q, _tail(q, d1), k, _tail(k, d1), v, _tail(v, d1), out, _tail(out, d1), lse, table, counts,
            *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], *out.stride()[:4],
            F, H, N, M, table.shape[1], num_m_blocks, scale * LOG2E, D,
            D0=d0, D1=d1, MASK_D=mask_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            DOT_PRECISION=dot_precision(dtype), ALIGN=align, **cfg.launch_options)

    align = vector_align(d0, d1, q, k, v, out)
    key = forward_autotune_key(d0 + d1, dtype, arch, table.shape, N, M, align=align)
    launch(_autotune.pick("frame_attention_forward", key, candidates, launch, q.device))
    return out, lse


def frame_attention_backward_triton(dout, q, k, v, out, lse, table, counts, readers, reader_counts,
                                    scale: float, *, dq_config: LaunchConfig | None = None,
                                    dkdv_config: LaunchConfig | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous. Two launches: dq (which also stores delta), then dk/dv.

    Each kernel runs the sweep's measured choice or its default config: the backward is not
    autotuned at run time (each candidate would add kernels x dtypes x archs to the CI compile).
    ``dq_config`` / ``dkdv_config`` run a declared candidate instead (a sweep)."""
    q, k, v, out, dout = (_unit_stride(t) for t in (q, k, v, out, dout))
    B, F, N, H, D = q.shape
    M = k.shape[2]
    d0, d1, mask_d = head_blocks(D)
    dtype, arch = DTYPE_NAMES[q.dtype], device_arch(q.device)
    dq_candidates = tile_candidates("backward_dq", d0 + d1, dtype, arch)
    kv_candidates = tile_candidates("backward_dkdv", d0 + d1, dtype, arch)
    dq_cfg = _measured_config("backward_dq", q.device, d0 + d1, dtype, N, any_size=True) or dq_candidates[0]
    kv_cfg = _measured_config("backward_dkdv", q.device, d0 + d1, dtype, N, any_size=True) or kv_candidates[0]
    if dq_config is not None:
        dq_cfg = _declared(dq_config, dq_candidates, "backward_dq")
    if dkdv_config is not None:
        kv_cfg = _declared(dkdv_config, kv_candidates, "backward_dkdv")
    dq = torch.empty((B, F, N, H, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, F, M, H, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, F, M, H, D), dtype=v.dtype, device=v.device)
    delta = torch.empty((B, F, H, N), dtype=torch.float32, device=q.device)
    _check_int32_span(q=q, k=k, v=v, out=out, dout=dout)
    num_m_blocks = cdiv(N, dq_cfg.block_m)
    num_n_blocks = cdiv(M, kv_cfg.block_n)
    check_grid(max(num_m_blocks, num_n_blocks) * F * H * B, "frame_attention")
    precision = dot_precision(dtype)
    align = vector_align(d0, d1, q, k, v, out, dout, dq, dk, dv)
    _frame_attention_backward_dq_kernel[(num_m_blocks * F * H * B,)](
        q, _tail(q, d1), k, _tail(k, d1), v, _tail(v, d1), out, _tail(out, d1), dout, _tail(dout, d1),
        dq, _tail(dq, d1), lse, delta, table, counts,
        *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], *out.stride()[:4], *dout.stride()[:4],
        *dq.stride()[:4], F, H, N, M, table.shape[1], num_m_blocks, scale, scale * LOG2E, D,
        D0=d0, D1=d1, MASK_D=mask_d, BLOCK_M=dq_cfg.block_m, BLOCK_N=dq_cfg.block_n,
        DOT_PRECISION=precision, ALIGN=align, **dq_cfg.launch_options)
    _frame_attention_backward_dkdv_kernel[(num_n_blocks * H * B * F,)](
        q, _tail(q, d1), k, _tail(k, d1), v, _tail(v, d1), dout, _tail(dout, d1),
        dk, _tail(dk, d1), dv, _tail(dv, d1), lse, delta, readers, reader_counts,
        *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], *dout.stride()[:4], *dk.stride()[:4],
        F, H, B, N, M, num_n_blocks, scale, scale * LOG2E, D,
        D0=d0, D1=d1, MASK_D=mask_d, BLOCK_M=kv_cfg.block_m, BLOCK_N=kv_cfg.block_n,
        DOT_PRECISION=precision, ALIGN=align, **kv_cfg.launch_options)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (kernel, head blocking, dtype, tile config) the launchers can pick.
# ----------------------------------------------------------------------------------------------
# Argument kinds (``_launch.kernel_signature`` reads each kernel's own parameter list): the pointers
# come first -- q/k/v/out and their gradients in the input dtype, the softmax statistics fp32, the
# key-frame tables int32 --; after them the two scales are fp32, every other argument (strides,
# sizes, head_dim) int32.
_STATISTICS = {"Lse", "Delta"}
_TABLES = {"Table", "Counts", "Readers", "ReaderCounts"}
_SCALES = {"scale", "qk_scale"}


def aot_specs() -> list[KernelSpec]:
    """Every tile candidate of every pass, unhinted and (``_HINTED_BLOCKINGS``, fp16/bf16) with the
    16-byte row hint, for the archs whose table lists it; fp16/bf16 specs must use wgmma on sm_90,
    fp32 (exact IEEE products) runs on CUDA cores."""
    blockings = sorted({head_blocks(d) for d in range(MIN_HEAD_DIM, MAX_HEAD_DIM + 1)})
    specs = []
    kernels = {"forward": _frame_attention_forward_kernel, "backward_dq": _frame_attention_backward_dq_kernel,
               "backward_dkdv": _frame_attention_backward_dkdv_kernel}
    for kernel_pass, kernel in kernels.items():
        signatures = {dtype: kernel_signature(kernel, dtype, fp32_pointers=_STATISTICS,
                                              int32_pointers=_TABLES, fp32_scalars=_SCALES)
                      for dtype in ("fp16", "bf16", "fp32")}
        for (d0, d1, mask_d), dtype, arch in itertools.product(blockings, signatures, ARCHS):
            vector = 16 // TORCH_DTYPES[dtype].itemsize
            aligns = (1, vector) if (d0, d1) in _HINTED_BLOCKINGS and dtype != "fp32" else (1,)
            stack = allowed_stack(kernel_pass, arch, dtype, d0 + d1)
            for cfg, align in itertools.product(tile_candidates(kernel_pass, d0 + d1, dtype, arch), aligns):
                constexprs = {"D0": d0, "D1": d1, "MASK_D": mask_d, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                              "DOT_PRECISION": dot_precision(dtype), "ALIGN": align}
                specs.append((attention_spec(__name__, kernel, signatures[dtype], constexprs, cfg,
                                             expect_wgmma=dtype != "fp32", stack=stack), arch))
    return merge_archs(specs)

