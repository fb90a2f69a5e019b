"""Public GroupNorm-over-frames op: :func:`frame_group_norm` (METHODS.md sections 2 and 6), forward and
backward, and its two passes on their own for callers that combine statistics between them.

Layout: the custom ops ``vidgen::frame_group_norm_fwd`` / ``_bwd`` (both passes, differentiable),
``vidgen::frame_group_norm_statistics`` and ``vidgen::frame_group_norm_apply`` (one pass each,
inference), each the Triton kernels or the PyTorch reference; the public functions with their
argument checks.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from ..kernels import frame_group_norm as _kernels
from ..kernels.frame_group_norm import (frame_group_norm_apply_reference, frame_group_norm_backward_reference,
                                        frame_group_norm_reference, frame_group_norm_statistics_reference)

__all__ = ["frame_group_norm", "frame_group_norm_apply", "frame_group_norm_statistics"]

FRAME_GROUP_NORM = _backend.declare("frame_group_norm", ("triton", "torch"), differentiable=True)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp64: reference only


# ----------------------------------------------------------------------------------------------
# Custom ops: no host synchronisation (CUDA-graph safe); opaque to torch.compile, which
# frame_group_norm does not hand them (it traces the reference's ATen ops). ``statistics`` is
# (B, S, G, 3) fp32 (float64 for float64 inputs): partial (count, sum, sum of squares) per video and
# group, S = F as the statistics pass writes them.
# ----------------------------------------------------------------------------------------------
def _frame_group_norm_forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_frames: int,
                                   num_groups: int, eps: float, silu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y contiguous in x's dtype, statistics (B, F, G, 3))."""
    x = x.contiguous()
    if _backend.runs_triton(FRAME_GROUP_NORM, x):
        return _kernels.frame_group_norm_forward_triton(x, num_frames, num_groups, weight, bias, eps, silu)
    return frame_group_norm_reference(x, num_frames, num_groups, weight, bias, eps, silu)


# The public function calls the implementation itself where the registration would only cost
# time (eager inference: see ``_backend.direct_call_ok``).
_frame_group_norm_forward = torch.library.custom_op("vidgen::frame_group_norm_fwd", _frame_group_norm_forward_impl,
                                                    mutates_args=())


def _statistics_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _statistics_like(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    return x.new_empty((x.shape[0] // num_frames, num_frames, num_groups, _kernels.STATISTICS),
                       dtype=_statistics_dtype(x))


@_frame_group_norm_forward.register_fake
def _frame_group_norm_forward_fake(x, weight, bias, num_frames, num_groups, eps, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _statistics_like(x, num_frames, num_groups)


@torch.library.custom_op("vidgen::frame_group_norm_bwd", mutates_args=())
def _frame_group_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               statistics: torch.Tensor, num_frames: int, eps: float,
                               silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx contiguous in x's dtype, dweight, dbias in their parameters' dtypes)."""
    dy, x = dy.contiguous(), x.contiguous()
    if _backend.runs_triton(FRAME_GROUP_NORM, x):
        return _kernels.frame_group_norm_backward_triton(dy, x, weight, bias, statistics, num_frames, eps, silu)
    return frame_group_norm_backward_reference(dy, x, weight, bias, statistics, num_frames, eps, silu)


@_frame_group_norm_backward.register_fake
def _frame_group_norm_backward_fake(dy, x, weight, bias, statistics, num_frames, eps, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight), torch.empty_like(bias)


def _frame_group_norm_setup_context(ctx, inputs, output):
    x, weight, bias, num_frames, _num_groups, eps, silu = inputs
    _, statistics = output
    ctx.mark_non_differentiable(statistics)
    ctx.save_for_backward(x, weight, bias, statistics)
    ctx.num_frames, ctx.eps, ctx.silu = num_frames, eps, silu


def _frame_group_norm_autograd_backward(ctx, dy, _dstatistics):
    x, weight, bias, statistics = ctx.saved_tensors
    dx, dweight, dbias = _frame_group_norm_backward(dy, x, weight, bias, statistics, ctx.num_frames, ctx.eps, ctx.silu)
    return dx, dweight, dbias, None, None, None, None


_frame_group_norm_forward.register_autograd(_frame_group_norm_autograd_backward,
                                            setup_context=_frame_group_norm_setup_context)


@torch.library.custom_op("vidgen::frame_group_norm_statistics", mutates_args=())
def _frame_group_norm_statistics_op(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    x = x.contiguous()
    if _backend.runs_triton(FRAME_GROUP_NORM, x):
        return _kernels.frame_group_norm_statistics_triton(x, num_frames, num_groups)
    return frame_group_norm_statistics_reference(x, num_frames, num_groups)


@_frame_group_norm_statistics_op.register_fake
def _frame_group_norm_statistics_fake(x, num_frames, num_groups):
    return _statistics_like(x, num_frames, num_groups)


@torch.library.custom_op("vidgen::frame_group_norm_apply", mutates_args=())
def _frame_group_norm_apply_op(x: torch.Tensor, statistics: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               num_frames: int, eps: float, silu: bool) -> torch.Tensor:
    x = x.contiguous()
    if _backend.runs_triton(FRAME_GROUP_NORM, x):
        return _kernels.frame_group_norm_apply_triton(x, statistics.contiguous(), num_frames, weight, bias, eps, silu)
    return frame_group_norm_apply_reference(x, statistics, num_frames, weight, bias, eps, silu)


@_frame_group_norm_apply_op.register_fake
def _frame_group_norm_apply_fake(x, statistics, weight, bias, num_frames, eps, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def _check_input(x, num_frames) -> None:
    _checks.tensor("x", x, dtypes=_DTYPES)
    if x.dim() < 3 or x.numel() == 0:
        raise ValueError(f"x: expected a non-empty (B*F, C, h, w) (or (B*F, C, N)) tensor, got shape {tuple(x.shape)}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
    if x.shape[0] % num_frames:
        raise ValueError(f"num_frames={num_frames} does not divide x's {x.shape[0]} frames (expected (B*F, C, ...) "
                         "with the frames of each video adjacent)")


def _check_groups(num_groups, channels: int) -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups: expected a positive int dividing the {channels} channels, got {num_groups!r}")


def _parameters(x: torch.Tensor, weight, bias, eps) -> tuple[torch.Tensor, torch.Tensor, float]:
    """weight and bias as (C,) tensors (ones and zeros for None), checked, and eps as a float."""
    channels = x.shape[1]
    weight = x.new_ones(channels) if weight is None else weight
    bias = x.new_zeros(channels) if bias is None else bias
    for name, t in (("weight", weight), ("bias", bias)):
        _checks.tensor(name, t, ndim=1, dtypes=_DTYPES)
        if t.shape[0] != channels:
            raise ValueError(f"{name}: expected ({channels},), one per channel of x, got {tuple(t.shape)}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{name}: expected x's dtype ({x.dtype}) or torch.float32, got {t.dtype}")
    _checks.same_device(x=x, weight=weight, bias=bias)
    eps = _checks.non_negative("eps", eps)
    return weight, bias, eps


def frame_group_norm(x: torch.Tensor, num_frames: int, num_groups: int, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, eps: float = 1e-5, *, silu: bool = False) -> torch.Tensor:
    """``nn.GroupNorm`` of each video as a 5-D ``(B, C, F, h, w)`` tensor, computed on its image layout.

    ``y = silu?((x - mean) / sqrt(var + eps) * weight + bias)`` where mean and var are over the
    C/G channels of a group, every pixel and all F frames of one video. Equal to
    ``F.group_norm(x5d, num_groups, weight, bias, eps)`` on ``x5d = x.view(B, F, C, h, w).transpose(1, 2)``
    (and ``F.silu`` of it with ``silu``), without the permuted copies; with ``num_frames=1`` it is
    a plain GroupNorm (+ SiLU) of each frame.

    Args:
        x: (B*F, C, h, w) or (B*F, C, N), the F frames of each video adjacent (frame fastest), fp16,
            bf16 or fp32 (fp64 runs the PyTorch reference). Any strides (a non-contiguous x is copied).
        num_frames: F, frames per video.
        num_groups: G, dividing C.
        weight, bias: (C,) in x's dtype or fp32; None for ones and zeros.
        silu: apply SiLU before the one store (a ResNet block's norm + nonlinearity).

    Returns:
        y, contiguous, x's shape and dtype. Differentiable in x, weight and bias.

    Two passes, a statistics pass (per video, frame and group: count, sum and sum of squares in
    fp32) and an apply pass that adds a video's partial sums up (``vidgen.kernels.frame_group_norm``);
    :func:`frame_group_norm_statistics` and :func:`frame_group_norm_apply` run them one at a time
    for callers whose frames of a video are split across processes (frame-parallel sampling
    all-reduces the statistics between them). Backends: Triton on CUDA (and on CPU under
    ``TRITON_INTERPRET=1``), else the PyTorch reference; under torch.compile, the reference's
    ATen ops, for Inductor to fuse with the operators around it.
    """
    _check_input(x, num_frames)
    _check_groups(num_groups, x.shape[1])
    weight, bias, eps = _parameters(x, weight, bias, eps)
    silu = bool(silu)
    if torch.compiler.is_compiling():
        # Under torch.compile the norm is traced as its ATen ops: Inductor fuses them with their
        # neighbours (the add before a ResNet's second norm, a motion module's layout change after
        # it) and reads through the frame/space permutation itself, which the opaque kernel could not
        # offer it. Same fp32 statistics, same rounding at the end.
        return frame_group_norm_reference(x, num_frames, num_groups, weight, bias, eps, silu)[0]
    if _backend.direct_call_ok(x, weight, bias):
        return _frame_group_norm_forward_impl(x, weight, bias, num_frames, num_groups, eps, silu)[0]
    y, _ = _frame_group_norm_forward(x, weight, bias, num_frames, num_groups, eps, silu)
    return y


def frame_group_norm_statistics(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    """The statistics pass of :func:`frame_group_norm` on its own (inference: no backward).

    Returns:
        (B, F, G, 3) fp32 (float64 for float64 x): ``(count, sum, sum of squares)`` of each
        frame's share of each group. Partials of the same video and group add up: a process
        holding some of a video's frames can sum its own (``.sum(1, keepdim=True)``),
        all-reduce that with the other processes' and pass the result to
        :func:`frame_group_norm_apply`.
    """
    _check_input(x, num_frames)
    _check_groups(num_groups, x.shape[1])
    return _frame_group_norm_statistics_op(x, num_frames, num_groups)


def frame_group_norm_apply(x: torch.Tensor, statistics: torch.Tensor, num_frames: int,
                           weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5,
                           *, silu: bool = False) -> torch.Tensor:
    """The apply pass of :func:`frame_group_norm` on its own (inference: no backward): normalises
    ``x`` with the mean and variance of each video's group given by ``statistics`` (B, S, G, 3),
    partial ``(count, sum, sum of squares)`` that it adds up over S (see
    :func:`frame_group_norm_statistics`). Arguments and result otherwise as :func:`frame_group_norm`.
    """
    _check_input(x, num_frames)
    _checks.tensor("statistics", statistics, ndim=4, dtypes=(_statistics_dtype(x),))
    videos = x.shape[0] // num_frames
    if statistics.shape[0] != videos or statistics.shape[3] != _kernels.STATISTICS or statistics.shape[1] < 1:
        raise ValueError(f"statistics: expected ({videos}, S, G, {_kernels.STATISTICS}) partial (count, sum, sum of "
                         f"squares) per video and group, got {tuple(statistics.shape)}")
    _check_groups(statistics.shape[2], x.shape[1])
    weight, bias, eps = _parameters(x, weight, bias, eps)
    _checks.same_device(x=x, statistics=statistics)
    return _frame_group_norm_apply_op(x, statistics, weight, bias, num_frames, eps, bool(silu))

