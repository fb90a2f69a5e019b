"""GroupNorm whose statistics pool over the frames of each video, on the image layout.

Video models normalise some activations as 5-D ``(B, C, F, h, w)`` tensors: AnimateDiff's motion
modules (their input GroupNorm) and Tune-A-Video's ResNet blocks (its 5-D GroupNorm). Their
groups' statistics span every frame of a video. Computed here on the ``(B*F, C, h, w)`` layout
the UNet already holds, without permuting the video there and back: :func:`group_norm_over_frames`
runs :func:`vidgen.ops.frame_group_norm` (a statistics pass and an apply pass, with the SiLU that
follows in a ResNet block fused into the apply). :func:`group_norm_over_frames_reference` is the
formulation of the models vidgen replaces, for an unpatched video UNet.

When the frames of a video are spread over processes (frame-parallel sampling,
:mod:`vidgen.integration.frame_parallel`), each process holds part of every group: inside
:func:`statistics_summed_across` the per-(video, group) count, sum and sum of squares are summed
across the processes between the two passes, so every process normalises with the statistics of
the whole video. This module knows nothing of processes: the caller
supplies the sum.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..ops.frame_group_norm import frame_group_norm, frame_group_norm_apply, frame_group_norm_statistics

__all__ = ["group_norm_of_video", "group_norm_over_frames", "group_norm_over_frames_reference", "pools_across_processes",
           "statistics_summed_across"]

# In-place sum of a (3, B, G) float64 tensor of partial (count, sum, sum of squares) over the
# processes that hold the rest of each video; None: this process holds whole videos.
_SUM_ACROSS: contextvars.ContextVar[Callable[[torch.Tensor], None] | None] = contextvars.ContextVar(
    "vidgen_group_norm_sum_across", default=None)


@contextlib.contextmanager
def statistics_summed_across(sum_in_place: Callable[[torch.Tensor], None] | None) -> Iterator[None]:
    """Inside, every GroupNorm over frames pools its statistics with the parts of the videos that other
    processes hold: ``sum_in_place(partial)`` sums a (3, B, G) float64 tensor of per-group (count, sum,
    sum of squares) across them. ``None`` restores whole-video statistics (a part computed redundantly)."""
    token = _SUM_ACROSS.set(sum_in_place)
    try:
        yield
    finally:
        _SUM_ACROSS.reset(token)


def _sum_across() -> Callable[[torch.Tensor], None] | None:
    """The active sum, or None. torch.compile cannot trace a ContextVar read (a graph break in every
    block): compiled code holds whole videos (``vidgen.patch`` refuses compile with frame_parallel)."""
    return None if torch.compiler.is_compiling() else _SUM_ACROSS.get()


def pools_across_processes() -> bool:
    """Whether GroupNorms over frames pool with other processes here (a video's frames may be here as
    few as one: the statistics still span the whole video)."""
    return _sum_across() is not None


def group_norm_over_frames(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int, *, silu: bool = False) -> torch.Tensor:
    """``norm`` applied to the video ``(B, C, F, h, w)`` whose frames ``x`` holds as ``(B*F, C, h, w)``
    (frame fastest), and SiLU of it with ``silu``; returns ``(B*F, C, h, w)`` in ``x``'s dtype.

    Statistics and the affine map run in at least fp32 and are rounded once at the end, like
    torch's GroupNorm kernels. Differentiable (Tune-A-Video tuning trains through it). Inside
    :func:`statistics_summed_across` the statistics also pool over the frames (or positions) other
    processes hold (sampling: the op's two passes with the sums added up between them).
    """
    sum_across = _sum_across()
    if sum_across is None:
        return frame_group_norm(x, num_frames, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=silu)
    return _pooled_group_norm(x, norm, num_frames, sum_across, silu)


def group_norm_over_frames_reference(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int) -> torch.Tensor:
    """The same norm as Tune-A-Video's reference code computes it: ``norm`` on the 5-D video (a
    permuted copy in, PyTorch's GroupNorm, a permuted copy out)."""
    batch_frames, channels = x.shape[:2]
    video = x.view(batch_frames // num_frames, num_frames, channels, *x.shape[2:]).transpose(1, 2)
    out = nn.functional.group_norm(video, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out.transpose(1, 2).reshape(x.shape)


def _pooled_group_norm(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int,
                       sum_across: Callable[[torch.Tensor], None], silu: bool) -> torch.Tensor:
    """:func:`group_norm_over_frames` of a part of each video: the op's statistics pass on this part,
    its partial (count, sum, sum of squares) summed across the processes (as float64), and its apply
    pass with the totals. One process alone gives exactly the single-process result."""
    videos, groups = x.shape[0] // num_frames, norm.num_groups
    if x.numel() == 0:  # this process holds no element of these groups: it contributes nothing
        partial = x.new_zeros((3, videos, groups), dtype=torch.float64)
        sum_across(partial)
        return x.new_empty(x.shape)
    statistics = frame_group_norm_statistics(x, num_frames, groups).sum(1)  # (B, G, 3)
    partial = statistics.permute(2, 0, 1).double().contiguous()  # (3, B, G)
    sum_across(partial)
    totals = partial.permute(1, 2, 0).to(statistics.dtype)[:, None].contiguous()  # (B, 1, G, 3)
    return frame_group_norm_apply(x, totals, num_frames, norm.weight, norm.bias, norm.eps, silu=silu)


def group_norm_of_video(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` of a 5-D video ``(B, C, F, h, w)`` (any strides) through :func:`group_norm_over_frames`:
    what a diffusers module that calls its GroupNorm on the 5-D tensor computes, so that its statistics
    too can pool across processes. Returns ``(B, C, F, h, w)`` (frame-major in memory)."""
    videos, channels, frames = x.shape[:3]
    per_frame = x.transpose(1, 2).reshape(videos * frames, channels, *x.shape[3:])
    return group_norm_over_frames(per_frame, norm, frames).view(videos, frames, channels, *x.shape[3:]).transpose(1, 2)
