"""How a video sits inside a diffusers image model: frames folded into the batch.

Video UNets keep activations in the image layout, ``(B*F, N, C)`` tokens or ``(B*F, C, h, w)``
maps, frame index fastest within each video ("(b f)"). The frame count enters vidgen from a
caller (a pipeline, a processor's ``num_frames``) and is checked once, where it enters, by
:func:`videos_in`; the layers below trust it.
"""
from __future__ import annotations

__all__ = ["head_dim_of", "videos_in"]


def videos_in(batch_frames: int, num_frames, role: str = "num_frames") -> int:
    """How many videos a batch of ``batch_frames`` frames holds at ``num_frames`` frames each (frames
    folded into the batch, ``(B*F, ...)``, frame fastest). The one check of a frame count entering
    vidgen from a caller; ``role`` names the caller in the message."""
    if num_frames is None:
        raise ValueError(f"{role} needs the frame count: pass num_frames= (the video UNet passes it; for a "
                         "FrameAttnProcessor, also cross_attention_kwargs={'num_frames': F} on the UNet call)")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
    if batch_frames % num_frames:
        raise ValueError(f"num_frames={num_frames} does not divide the batch of {batch_frames} frames "
                         "(expected (B*F, ...) with frames folded into the batch)")
    return batch_frames // num_frames


def head_dim_of(attn) -> int:
    """The head dim of a diffusers ``Attention`` module, from its configuration (no forward needed)."""
    return attn.inner_dim // attn.heads
