"""GroupNorm whose statistics pool over the frames of each video, on the image layout.

Video models normalise some activations as 5-D ``(B, C, F, h, w)`` tensors: AnimateDiff's motion
modules (their input GroupNorm) and Tune-A-Video's ResNet blocks (its 5-D GroupNorm). Their
groups' statistics span every frame of a video. Computed here on the ``(B*F, C, h, w)`` layout
the UNet already holds, without permuting the video there and back: one statistics pass, one
apply pass.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["group_norm_over_frames"]


def group_norm_over_frames(x: torch.Tensor, norm: nn.GroupNorm, num_frames: int) -> torch.Tensor:
    """``norm`` applied to the video ``(B, C, F, h, w)`` whose frames ``x`` holds as ``(B*F, C, h, w)``
    (frame fastest); returns ``(B*F, C, h, w)`` in ``x``'s dtype.

    Statistics and the affine map run in at least fp32 and are rounded once at the end, like
    torch's GroupNorm kernels (no copy for fp32/fp64 inputs).
    """
    batch_frames, channels = x.shape[:2]
    groups = norm.num_groups
    math_dtype = torch.promote_types(x.dtype, torch.float32)
    # (B, F, G, C/G, h*w): a group's statistics are over dims 1, 3 and 4.
    grouped = x.reshape(batch_frames // num_frames, num_frames, groups, channels // groups, -1).to(math_dtype)
    var, mean = torch.var_mean(grouped, dim=(1, 3, 4), keepdim=True, correction=0)  # (B, 1, G, 1, 1)
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.to(math_dtype).view(groups, channels // groups, 1)  # (B, 1, G, C/G, 1)
        shift = norm.bias.to(math_dtype).view(groups, channels // groups, 1) - mean * scale
    else:
        shift = -mean * scale
    return torch.addcmul(shift, grouped, scale).to(x.dtype).view(x.shape)
