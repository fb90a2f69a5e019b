"""Public frame-sparse attention ops (METHODS.md section 1): :func:`frame_attention` and its presets.

Query frame f of every video attends to the union of the keys of the frames listed in row f
of a key-frame table: Tune-A-Video's sparse-causal attention (frames 0 and f-1), first-frame
attention (Text2Video-Zero, LAMP) and full spatio-temporal attention are three tables for the
same op (the named modes, :data:`FRAME_MODES` and :func:`key_frames_for`). Differentiable in q, k and v.

Layout: the custom ops ``vidgen::frame_attention_fwd`` / ``_bwd`` (the Triton kernels or the
PyTorch reference), the key tables they take, the public functions, and what a caller needs to
decide whether the op serves a call (:func:`frame_attention_unsupported_reason`, and the reference
to compute it otherwise), so the diffusers integration never imports ``vidgen.kernels``.
"""
from __future__ import annotations

import functools

import torch

from . import _backend, _checks
from ._fallback import warn_once
from ..kernels import frame_attention as _kernels
from ..kernels import frame_attention_fp8 as _fp8_kernels
from ..kernels.frame_attention import FRAME_MODES, frame_attention_reference, key_frames_for

__all__ = ["FRAME_MODES", "PRECISIONS", "first_frame_attention", "frame_attention", "frame_attention_reference",
           "frame_attention_unsupported_reason", "full_frame_attention", "key_frames_for",
           "sparse_causal_attention"]

FRAME_ATTENTION = _backend.declare("frame_attention", ("triton", "torch"), differentiable=True)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp64: reference only
# "auto": the inputs' own precision. "fp8": Q K^T on e4m3 tensor cores (sm_90), inference only.
PRECISIONS = ("auto", "fp8")


# ----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile; the Triton path never synchronises with the host (CUDA-graph
# safe; the reference path reads the table on the host). The prepared key table travels as tensors
# and sizes are unspecialised kernel arguments, so a new F, N or table never recompiles anything.
# ----------------------------------------------------------------------------------------------
def _frame_attention_forward_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                                  counts: torch.Tensor, readers: torch.Tensor, reader_counts: torch.Tensor,
                                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse). ``readers``/``reader_counts`` (the reverse table) are only saved for the backward."""
    if _backend.runs_triton(FRAME_ATTENTION, q):
        return _kernels.frame_attention_forward_triton(q, k, v, table, counts, scale)
    out, lse = frame_attention_reference(q, k, v, _listed_rows(table, counts), scale)
    return out.contiguous(), lse.contiguous()


# The public function calls the implementation itself where the registration would only cost
# time (eager inference: see ``_backend.direct_call_ok``).
_frame_attention_forward = torch.library.custom_op("vidgen::frame_attention_fwd", _frame_attention_forward_impl,
                                                   mutates_args=())


@_frame_attention_forward.register_fake
def _frame_attention_forward_fake(q, k, v, table, counts, readers, reader_counts, scale):
    B, F, N, H, _ = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty((B, F, H, N), dtype=lse_dtype, device=q.device))


@torch.library.custom_op("vidgen::frame_attention_bwd", mutates_args=())
def _frame_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, table: torch.Tensor, counts: torch.Tensor,
                              readers: torch.Tensor, reader_counts: torch.Tensor,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each contiguous in its input's shape."""
    if _backend.runs_triton(FRAME_ATTENTION, q):
        return _kernels.frame_attention_backward_triton(dout, q, k, v, out, lse, table, counts, readers,
                                                        reader_counts, scale)
    grads = _kernels.frame_attention_backward_reference(dout, q, k, v, _listed_rows(table, counts), scale)
    return tuple(g.contiguous() for g in grads)


@_frame_attention_backward.register_fake
def _frame_attention_backward_fake(dout, q, k, v, out, lse, table, counts, readers, reader_counts, scale):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _frame_attention_setup_context(ctx, inputs, output):
    q, k, v, table, counts, readers, reader_counts, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, table, counts, readers, reader_counts)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for lse


def _frame_attention_autograd_backward(ctx, dout, dlse):
    if dout is None:
        return None, None, None, None, None, None, None, None
    dq, dk, dv = _frame_attention_backward(dout, *ctx.saved_tensors, ctx.scale)
    return dq, dk, dv, None, None, None, None, None


_frame_attention_forward.register_autograd(_frame_attention_autograd_backward,
                                           setup_context=_frame_attention_setup_context)


def _frame_attention_fp8_forward_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                                      counts: torch.Tensor, scale: float) -> torch.Tensor:
    """The FP8 forward's output: the e4m3 kernel on sm_90 (and the interpreter); on an older GPU the
    kernel of the inputs' dtype, said once; on the reference backend its PyTorch emulation."""
    if _backend.runs_triton(FRAME_ATTENTION, q):
        if q.device.type == "cpu" or _kernels.device_arch(q.device) >= 90:
            return _fp8_kernels.frame_attention_forward_fp8_triton(q, k, v, table, counts, scale)[0]
        _warn_fp8_unavailable(torch.cuda.get_device_capability(q.device))
        return _kernels.frame_attention_forward_triton(q, k, v, table, counts, scale)[0]
    out, _ = _fp8_kernels.frame_attention_fp8_reference(q, k, v, _listed_rows(table, counts), scale)
    return out.contiguous()


_frame_attention_fp8_forward = torch.library.custom_op("vidgen::frame_attention_fp8_fwd",
                                                       _frame_attention_fp8_forward_impl, mutates_args=())


@_frame_attention_fp8_forward.register_fake
def _frame_attention_fp8_forward_fake(q, k, v, table, counts, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _warn_fp8_unavailable(capability: tuple[int, int]) -> None:
    warn_once("frame attention at precision='fp8'",
              f"it needs e4m3 tensor cores (sm_90) and this GPU is sm_{capability[0]}{capability[1]}",
              "in the inputs' precision")


def _listed_rows(table: torch.Tensor, counts: torch.Tensor) -> list[list[int]]:
    """The distinct key frames of each row (host copy; reference path only)."""
    return [row[:n] for row, n in zip(table.tolist(), counts.tolist())]


# ----------------------------------------------------------------------------------------------
# Key tables: validated on the host, prepared once per (content, device) and cached, so repeated
# calls (every UNet layer, every step) copy nothing to the device and never synchronise.
# ----------------------------------------------------------------------------------------------
def _key_rows(key_frames, num_frames: int, key_count: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Validate ``key_frames``: F = ``num_frames`` rows of indices below ``key_count`` (default F), the
    frames of k; returns it as a tuple of rows (a hashable cache key).

    A list or tuple of rows of plain ints (what every processor passes, in every layer and step) is
    validated once per distinct content: the check costs tens of microseconds, the lookup one."""
    if isinstance(key_frames, (list, tuple)):
        try:
            rows = tuple(tuple(row) for row in key_frames)
        except TypeError:
            rows = None
        # type(g) is int: a bool (or a tensor) hashes like an int and must still be refused below.
        if rows is not None and all(type(g) is int for row in rows for g in row):
            if torch.compiler.is_compiling():  # traced once per graph: no cache to consult
                return _validated_rows(rows, num_frames, key_count)
            return _validated_int_rows(rows, num_frames, key_count)
    return _validated_rows(key_frames, num_frames, key_count)


@functools.lru_cache(maxsize=256)
def _validated_int_rows(rows: tuple[tuple[int, ...], ...], num_frames: int,
                        key_count: int | None) -> tuple[tuple[int, ...], ...]:
    return _validated_rows(rows, num_frames, key_count)


def _validated_rows(key_frames, num_frames: int, key_count: int | None = None) -> tuple[tuple[int, ...], ...]:
    key_count = num_frames if key_count is None else key_count
    if isinstance(key_frames, torch.Tensor):
        if key_frames.dtype.is_floating_point or key_frames.dtype.is_complex or key_frames.dtype == torch.bool:
            raise TypeError(f"key_frames: expected an integer tensor, got {key_frames.dtype}")
        if key_frames.dim() != 2:
            raise ValueError(f"key_frames: expected a 2-D (F, K) table, got shape {tuple(key_frames.shape)}")
        rows = key_frames.tolist()  # a CUDA table costs one host sync here; pass a list or CPU tensor
    else:
        try:
            rows = [list(row) for row in key_frames]
        except TypeError:
            raise TypeError("key_frames: expected an (F, K) integer tensor or a list of F lists of frame "
                            f"indices, got {type(key_frames).__name__}") from None
        for row in rows:
            for g in row:
                if isinstance(g, bool) or not isinstance(g, (int, torch.SymInt)) and not (
                        isinstance(g, torch.Tensor) and g.dim() == 0 and not g.dtype.is_floating_point):
                    raise TypeError(f"key_frames: entries must be integer frame indices, got {g!r}")
        rows = [[int(g) for g in row] for row in rows]
    if len(rows) != num_frames:
        raise ValueError(f"key_frames: expected one row per frame (F={num_frames}), got {len(rows)} rows")
    for f, row in enumerate(rows):
        if not row:
            raise ValueError(f"key_frames: row {f} is empty, every query frame needs at least one key frame")
    width = max(len(row) for row in rows)
    rows = [row + row[:1] * (width - len(row)) for row in rows]  # ragged lists: pad with repeats (free)
    for f, row in enumerate(rows):
        bad = [g for g in row if not 0 <= g < key_count]
        if bad:
            raise ValueError(f"key_frames: row {f} lists frame(s) {bad}, expected indices in [0, {key_count})")
    return tuple(tuple(row) for row in rows)


def _build_tables(rows: tuple[tuple[int, ...], ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(table, counts, readers, reader_counts) on ``device`` (see ``prepare_key_table``)."""
    table, counts = _kernels.prepare_key_table(torch.tensor(rows, dtype=torch.int64, device=device))
    return (table, counts, *_kernels.reverse_key_table(table, counts))


@functools.lru_cache(maxsize=64)
def _cached_tables(rows: tuple[tuple[int, ...], ...], device: str) -> tuple[torch.Tensor, ...]:
    return _build_tables(rows, torch.device(device))


def _prepared_table(rows: tuple[tuple[int, ...], ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Eager: cached per (table, device), so a UNet's many calls copy nothing and never sync.
    Under torch.compile the few tiny table ops are traced into the graph instead."""
    if torch.compiler.is_compiling():
        return _build_tables(rows, device)
    return _cached_tables(rows, str(device))


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, scale) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor(name, t, ndim=5, dtypes=_DTYPES)
    _checks.same_device(q=q, k=k, v=v)
    _checks.same_dtype(q=q, k=k, v=v)
    B, F, N, H, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)} (B, F, M, H, D), got {tuple(v.shape)}")
    Bk, Fk, M, Hk, Dk = k.shape
    if (Bk, Hk, Dk) != (B, H, D) or Fk < F:
        raise ValueError(f"k: expected (B, Fk, M, H, D) = ({B}, Fk >= {F}, M, {H}, {D}) to match q (B, F, N, H, D) "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if Fk != F and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(f"k: keys of {Fk} frames for queries of {F} is a forward for inference (a frame-parallel "
                         "shard reading frames other processes hold) and has no backward; call it under "
                         "torch.no_grad(), or pass keys of the queries' own F frames")
    if (reason := frame_attention_unsupported_reason(D)) is not None:
        raise ValueError(f"q: head dim D={D} is not supported ({reason})")
    if min(B, F, N, H, M) == 0:
        raise ValueError(f"q, k: expected non-empty tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    return D ** -0.5 if scale is None else _checks.scale("scale", scale)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_frames, *,
                    scale: float | None = None, precision: str = "auto") -> torch.Tensor:
    """Attention of each query frame over the keys of a set of frames, without copying K or V.

    ``out[b, f, n, h] = softmax_j(scale * q[b, f, n, h] . K_f[j]) @ V_f`` where ``K_f``/``V_f``
    are the tokens of the frames in ``key_frames[f]`` (each distinct frame once), all heads
    independent.

    Args:
        q: (B, F, N, H, D) queries: B videos, F frames, N tokens per frame, H heads, head dim
            8 <= D <= 256. fp16, bf16 or fp32 (exact fp32 products, no tf32); fp64 runs the
            PyTorch reference.
        k, v: (B, F, M, H, D) keys and values of every frame. Any strides with unit stride on
            D: e.g. a projection output (B*F, N, H*D) viewed as (B, F, N, H, D) is read in place.
            For inference k and v may hold more frames than q, (B, Fk, M, H, D) with Fk > F: the
            table then indexes k's frames (a frame-parallel shard whose queries also read frames
            that other processes computed, :mod:`vidgen.integration.frame_parallel`).
        key_frames: (F, K) table (integer tensor, or list of F non-empty lists, which may be
            ragged): query frame f attends to the union of the tokens of frames
            ``key_frames[f]`` (indices into k's frames). A frame listed twice counts once, in the result and in the cost.
            Lists and CPU tensors are validated on the host and cached on the device; a CUDA
            tensor costs one host synchronisation.
        scale: score scale, ``D ** -0.5`` by default.
        precision: ``"auto"`` computes in the inputs' precision. ``"fp8"`` (opt-in, inference,
            fp16/bf16 inputs) runs Q K^T on e4m3 tensor cores, every query and key token (per
            head) with its own scale, and P V in the inputs' dtype: twice the tensor-core rate on the scores for an
            error of a few percent relative L2 on random inputs (``benchmarks/bench_frame_attention.py``
            measures it against fp32). It needs sm_90; other GPUs compute in the inputs' precision
            and say so once; the PyTorch backend emulates it.

    The backward is race-free and bit-deterministic in every mode, so there is no
    deterministic switch: every dk/dv block has exactly one writer (no atomics), which loops
    over the query frames that read its key frame.

    Returns:
        (B, F, N, H, D) contiguous, q's dtype: viewed as (B*F, N, H*D), the layout the output
        projection takes.
    """
    scale = _check_inputs(q, k, v, scale)
    _checks.choice("precision", precision, PRECISIONS)
    if precision == "fp8":
        _check_fp8(q, k, v)
    rows = _key_rows(key_frames, q.shape[1], k.shape[1])
    tables = _prepared_table(rows, q.device)
    if precision == "fp8":
        if _backend.direct_call_ok(q, k, v):
            return _frame_attention_fp8_forward_impl(q, k, v, *tables[:2], scale)
        return _frame_attention_fp8_forward(q, k, v, *tables[:2], scale)
    if _backend.direct_call_ok(q, k, v):
        return _frame_attention_forward_impl(q, k, v, *tables, scale)[0]
    out, _ = _frame_attention_forward(q, k, v, *tables, scale)
    return out


def _check_fp8(q, k, v) -> None:
    if q.dtype not in _fp8_kernels.FP8_DTYPES:
        raise TypeError(f"precision: 'fp8' takes fp16 or bf16 inputs (it rounds them to e4m3), got {q.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("precision: 'fp8' is a forward for inference and has no backward; call it under "
                         "torch.no_grad() or use precision='auto' for training")


def sparse_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            scale: float | None = None) -> torch.Tensor:
    """Tune-A-Video's ``SparseCausalAttention``: frame f attends to frames 0 and ``max(f - 1, 0)``.

    Same arguments and result as :func:`frame_attention`; equal to attending over
    ``cat([k[:, [0] * F], k[:, prev]], dim=2)`` (frames 0 and 1 see frame 0 once, at the cost of once).
    """
    return frame_attention(q, k, v, _kernels.sparse_causal_key_frames(_frames_of(q)), scale=scale)


def first_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          scale: float | None = None) -> torch.Tensor:
    """Every frame attends to frame 0 (Text2Video-Zero's ``CrossFrameAttnProcessor``, LAMP)."""
    return frame_attention(q, k, v, _kernels.first_frame_key_frames(_frames_of(q)), scale=scale)


def full_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                         scale: float | None = None) -> torch.Tensor:
    """Every frame attends to the tokens of all F frames (full spatio-temporal attention)."""
    return frame_attention(q, k, v, _kernels.full_key_frames(_frames_of(q)), scale=scale)


def _frames_of(q) -> int:
    _checks.tensor("q", q, ndim=5, dtypes=_DTYPES)
    return q.shape[1]


# ----------------------------------------------------------------------------------------------
# Capabilities: what a caller (the diffusers processors) asks before it calls the op. Two host
# integers and a dtype comparison: no device synchronisation.
# ----------------------------------------------------------------------------------------------
def frame_attention_unsupported_reason(head_dim: int, dtype: torch.dtype | None = None) -> str | None:
    """Why :func:`frame_attention` cannot run heads of ``head_dim`` (and ``dtype``), or None: the one
    place that decides which head dims the op serves (the range is the kernels' own constants)."""
    low, high = _kernels.MIN_HEAD_DIM, _kernels.MAX_HEAD_DIM
    if not low <= head_dim <= high:
        return f"head dim {head_dim} is outside the frame-attention kernels' range [{low}, {high}]"
    if dtype is not None and dtype not in _DTYPES:
        return f"frame attention takes fp16, bf16, fp32 or fp64, not {dtype}"
    return None
