"""Self-attention over the frame axis, read straight from the image layout (METHODS.md section 2).

Temporal layers in diffusers and Tune-A-Video rearrange the whole activation
``(b f) n c -> (b n) f c`` around each attention and back: two full copies, plus the copies
SDPA's head split makes. Here q, k and v come from the module's projections on the ``(B*F, N, C)``
tokens and ``vidgen.ops.temporal_attention`` reads them in place as ``(B, F, N, H, D)`` views; only
the matmuls touch memory. Every temporal role vidgen runs goes through :func:`attend_over_frames`:
Tune-A-Video's ``attn_temp`` (:class:`~vidgen.integration.processors.TemporalAttnProcessor`) and the
blocks of AnimateDiff motion modules (:mod:`vidgen.integration.motion`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._fallback import warn_once
from ..ops.temporal_attention import (temporal_attention, temporal_attention_reference,
                                      temporal_attention_unsupported_reason)
from .layout import videos_in

__all__ = ["attend_over_frames", "temporal_attention_core", "temporal_self_attention"]


def _split_heads(x: torch.Tensor, batch: int, num_frames: int, heads: int) -> torch.Tensor:
    """(B*F, N, H*D) -> (B, F, N, H, D) view (no copy for any strides the projections give)."""
    _, tokens, inner = x.shape
    return x.unflatten(0, (batch, num_frames)).unflatten(-1, (heads, inner // heads))


def temporal_self_attention(attn: nn.Module, hidden_states: torch.Tensor, num_frames: int,
                            *, positional_embedding: torch.Tensor | None = None,
                            identity_videos: int = 0) -> torch.Tensor:
    """Run diffusers ``Attention`` ``attn`` as self-attention over frames, in the image layout.

    Equivalent to ``rearrange(h, "(b f) n c -> (b n) f c")``, ``attn(h)`` and the inverse
    rearrange, without the two copies.

    Args:
        attn: a diffusers ``Attention`` used as self-attention (its ``to_q``, ``to_k``, ``to_v``,
            ``to_out``, ``heads``, ``scale``, optional ``norm_q``/``norm_k``,
            ``residual_connection`` and ``rescale_output_factor`` are honoured; spatial/group
            norms and cross-attention are not part of a temporal layer and are refused).
        hidden_states: (B*F, N, C), frame index fastest within each video ("(b f)").
        num_frames: F.
        positional_embedding: optional (F, C) table added to the attention's input (not to its
            residual), as diffusers' sinusoidal ``pos_embed`` does for motion modules.
        identity_videos: how many of the last videos get identity attention, every frame
            attending to itself only, so their attention output is their value projection:
            the perturbed branch of PAG (perturbed-attention guidance), which diffusers' PAG
            processors compute for the last chunk of the batch (METHODS.md section 7).

    Returns:
        (B*F, N, C), the attention output (plus its input when ``attn.residual_connection``).

    The scale is ``attn.scale`` (``D ** -0.5`` unless the module was built otherwise; note that
    diffusers' ``AttnProcessor2_0`` always uses ``D ** -0.5``). Heads the kernel does not serve
    (:func:`vidgen.ops.temporal_attention.temporal_attention_unsupported_reason`) run the op's eager
    PyTorch reference on the same views, with a warning once.
    """
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise ValueError(f"hidden_states: expected a (B*F, N, C) tensor, got {shape}")
    batch = videos_in(hidden_states.shape[0], num_frames, "temporal_self_attention")
    if getattr(attn, "is_cross_attention", False) or getattr(attn, "spatial_norm", None) is not None \
            or getattr(attn, "group_norm", None) is not None:
        raise ValueError("attn: expected a plain self-attention module (no cross-attention, spatial or group norm)")
    if positional_embedding is not None and positional_embedding.shape[0] < num_frames:
        raise ValueError(f"positional_embedding: has {positional_embedding.shape[0]} rows, fewer than "
                         f"num_frames={num_frames}")
    if isinstance(identity_videos, bool) or not isinstance(identity_videos, int) \
            or not 0 <= identity_videos <= batch:
        raise ValueError(f"identity_videos: expected an int in [0, {batch}], got {identity_videos!r}")
    return attend_over_frames(attn, hidden_states, num_frames, positional_embedding, identity_videos)


def attend_over_frames(attn: nn.Module, hidden_states: torch.Tensor, num_frames: int,
                       positional_embedding: torch.Tensor | None, identity_videos: int) -> torch.Tensor:
    """:func:`temporal_self_attention` on arguments already checked (the motion module's fused
    forward checks its call once, then runs every block through this)."""
    out, attn_input = temporal_attention_core(attn, hidden_states, num_frames, positional_embedding, identity_videos)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)  # dropout
    if attn.residual_connection:  # diffusers' residual is the attention's own input, embedding included
        out = out + attn_input
    return out / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else out


def temporal_attention_core(attn: nn.Module, hidden_states: torch.Tensor, num_frames: int,
                            positional_embedding: torch.Tensor | None, identity_videos: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attend_over_frames` up to the output projection: ``(out, attn_input)``, the heads'
    outputs merged, (B*F, N, H*D), what ``attn.to_out[0]`` takes (a fused block adds its residual in
    that projection's epilogue: :mod:`vidgen.integration.residual_adds`), and the attention's input
    (``hidden_states`` plus the positional embedding, if any)."""
    batch = hidden_states.shape[0] // num_frames
    attn_input = hidden_states
    if positional_embedding is not None:
        # (B, F, N, C) + (F, 1, C): the table varies along frames only.
        table = positional_embedding[:num_frames, None]
        attn_input = (hidden_states.unflatten(0, (batch, num_frames)) + table).flatten(0, 1)
    attended = batch - identity_videos  # videos whose frames attend to each other
    queries = attn_input if not identity_videos else attn_input[:attended * num_frames]
    v = _split_heads(attn.to_v(attn_input), batch, num_frames, attn.heads)
    if attended:
        q = _split_heads(attn.to_q(queries), attended, num_frames, attn.heads)
        k = _split_heads(attn.to_k(queries), attended, num_frames, attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        values = v if not identity_videos else v[:attended]
        reason = temporal_attention_unsupported_reason(q.shape[-1], q.dtype)
        if reason is None:
            out = temporal_attention(q, k, values, scale=attn.scale)
        else:
            warn_once("temporal attention", reason, "in eager PyTorch")
            out = temporal_attention_reference(q, k, values, attn.scale)[0]
        if identity_videos:
            out = torch.cat([out, v[attended:]])
    else:
        out = v
    return out.flatten(-2).flatten(0, 1), attn_input  # (B*F, N, H*D)
