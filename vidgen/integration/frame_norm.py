"""GroupNorm whose statistics pool over the frames of each video, on the image layout.

Video models normalise some activations as 5-D ``(B, C, F, h, w)`` tensors: AnimateDiff's motion
modules (their input GroupNorm) and Tune-A-Video's ResNet blocks (its 5-D GroupNorm, followed by
SiLU). Their groups' statistics span every frame of a video. vidgen computes them on the
``(B*F, C, h, w)`` layout the UNet already holds, without permuting the video there and back:
:func:`group_norm_over_frames` runs :func:`vidgen.ops.frame_group_norm` (a statistics pass and an
apply pass, the SiLU fused into the apply). :func:`group_norm_over_frames_reference` is the
formulation of the models vidgen replaces, for an unpatched video UNet.

Frame-parallel sampling, where each process holds some frames of every video, computes the same
norm with the op's two passes and an all-reduce of the per-(video, group) sums between them:
``vidgen.ops.frame_group_norm_statistics`` -> ``.sum(1, keepdim=True)`` -> all-reduce ->
``vidgen.ops.frame_group_norm_apply``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.frame_group_norm import frame_group_norm

__all__ = ["group_norm_over_frames", "group_norm_over_frames_reference"]


def group_norm_over_frames(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int, *, silu: bool = False) -> torch.Tensor:
    """``norm`` applied to the video ``(B, C, F, h, w)`` whose frames ``x`` holds as ``(B*F, C, h, w)``
    (frame fastest), and SiLU of it with ``silu``; returns ``(B*F, C, h, w)`` in ``x``'s dtype,
    contiguous. Statistics and the affine map run in fp32 and are rounded once, at the end.
    Differentiable (Tune-A-Video tuning trains through it)."""
    return frame_group_norm(x, num_frames, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=silu)


def group_norm_over_frames_reference(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int) -> torch.Tensor:
    """The same norm as Tune-A-Video's reference code computes it: ``norm`` on the 5-D video (a
    permuted copy in, PyTorch's GroupNorm, a permuted copy out)."""
    batch_frames, channels = x.shape[:2]
    video = x.view(batch_frames // num_frames, num_frames, channels, *x.shape[2:]).transpose(1, 2)
    out = nn.functional.group_norm(video, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out.transpose(1, 2).reshape(x.shape)
