"""GroupNorm whose statistics pool over the frames of each video, on the image layout.

Video models normalise some activations as 5-D ``(B, C, F, h, w)`` tensors: AnimateDiff's motion
modules (their input GroupNorm) and Tune-A-Video's ResNet blocks (its 5-D GroupNorm). Their
groups' statistics span every frame of a video. Computed here on the ``(B*F, C, h, w)`` layout
the UNet already holds, without permuting the video there and back: one statistics pass, one
apply pass.

When the frames of a video are spread over processes (frame-parallel sampling,
:mod:`vidgen.integration.frame_parallel`), each process holds part of every group: inside
:func:`statistics_summed_across` the per-(video, group) count, sum and sum of squares are summed
across the processes between the two passes, so every process normalises with the statistics of
the whole video. This module knows nothing of processes: the caller supplies the sum.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["group_norm_of_video", "group_norm_over_frames", "pools_across_processes", "statistics_summed_across"]

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


def pools_across_processes() -> bool:
    """Whether GroupNorms over frames pool with other processes here (a video's frames may be here as
    few as one: the statistics still span the whole video)."""
    return _SUM_ACROSS.get() is not None


def group_norm_over_frames(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int) -> torch.Tensor:
    """``norm`` applied to the video ``(B, C, F, h, w)`` whose frames ``x`` holds as ``(B*F, C, h, w)``
    (frame fastest); returns ``(B*F, C, h, w)`` in ``x``'s dtype.

    Statistics and the affine map run in at least fp32 and are rounded once at the end, like
    torch's GroupNorm kernels (no copy for fp32/fp64 inputs). Inside :func:`statistics_summed_across`
    the statistics also pool over the frames (or positions) other processes hold.
    """
    batch_frames, channels = x.shape[:2]
    groups = norm.num_groups
    math_dtype = torch.promote_types(x.dtype, torch.float32)
    # (B, F, G, C/G, h*w): a group's statistics are over dims 1, 3 and 4.
    grouped = x.reshape(batch_frames // num_frames, num_frames, groups, channels // groups, -1).to(math_dtype)
    sum_across = _SUM_ACROSS.get()
    if sum_across is None:
        var, mean = torch.var_mean(grouped, dim=(1, 3, 4), keepdim=True, correction=0)  # (B, 1, G, 1, 1)
    else:
        var, mean = _pooled_var_mean(grouped, sum_across)
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.to(math_dtype).view(groups, channels // groups, 1)  # (B, 1, G, C/G, 1)
        shift = norm.bias.to(math_dtype).view(groups, channels // groups, 1) - mean * scale
    else:
        shift = -mean * scale
    return torch.addcmul(shift, grouped, scale).to(x.dtype).view(x.shape)


def _pooled_var_mean(grouped: torch.Tensor, sum_across: Callable[[torch.Tensor], None]):
    """(var, mean) shaped (B, 1, G, 1, 1) of groups whose elements are spread over processes.

    Each process reduces its part exactly (``var_mean``) and contributes (count, count * mean,
    count * (var + mean^2)) in float64; the summed moments give the whole group's, with the
    cancellation of E[x^2] - E[x]^2 at float64 precision (an fp32 result exact to rounding unless
    |mean| exceeds the standard deviation by ~10^4). A process may hold no element of a group.
    """
    count = grouped.shape[1] * grouped.shape[3] * grouped.shape[4]
    if count:
        var, mean = torch.var_mean(grouped, dim=(1, 3, 4), correction=0)  # (B, G)
        mean, var = mean.double(), var.double()
        partial = torch.stack([torch.full_like(mean, float(count)), mean * count, (var + mean * mean) * count])
    else:
        partial = grouped.new_zeros((3, grouped.shape[0], grouped.shape[2]), dtype=torch.float64)
    sum_across(partial)
    total, total_sum, total_squares = partial.unbind(0)
    mean = total_sum / total
    var = (total_squares / total - mean * mean).clamp_min(0)
    shape = (grouped.shape[0], 1, grouped.shape[2], 1, 1)
    return var.to(grouped.dtype).view(shape), mean.to(grouped.dtype).view(shape)


def group_norm_of_video(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` of a 5-D video ``(B, C, F, h, w)`` (any strides) through :func:`group_norm_over_frames`:
    what a diffusers module that calls its GroupNorm on the 5-D tensor computes, so that its statistics
    too can pool across processes. Returns ``(B, C, F, h, w)`` (frame-major in memory)."""
    videos, channels, frames = x.shape[:3]
    per_frame = x.transpose(1, 2).reshape(videos * frames, channels, *x.shape[3:])
    return group_norm_over_frames(per_frame, norm, frames).view(videos, frames, channels, *x.shape[3:]).transpose(1, 2)
