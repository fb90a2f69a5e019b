"""diffusers' ``BasicTransformerBlock`` as a temporal layer, run on the image layout (METHODS.md section 2).

AnimateDiff's motion modules and Latte's temporal blocks are diffusers ``BasicTransformerBlock``s
that diffusers feeds with ``(B*N, F, C)`` tokens, permuted there from the ``(B*F, N, C)`` image
layout and back. Inside a block only the attention spans frames: the norms, the feed-forward and
Latte's timestep modulation act token by token and do not care how tokens are ordered. So the
blocks here take a video view ``(B, F, N, C)`` of the image layout (any strides: a frame window
or a band of spatial positions is a view of it), and the attention reads its projections in
place (:func:`vidgen.integration.temporal.attend_over_frames`). The first norm of each half
writes a fresh tensor, as it does in diffusers; nothing is permuted.

* :func:`block_unsupported_reason`: whether a block is one this module computes (structure, norm
  type, head dims), and if not why: asked when patching and again when a call finds new blocks.
* :class:`Modulation`: ``ada_norm_single``'s six per-video vectors (Latte, PixArt-style).
* :func:`self_attentions_over_frames` and :func:`feed_forward`: the block's two halves, which
  FreeNoise runs separately (attention per frame window, the feed-forward on the blend);
  :func:`block_over_frames`: the whole block.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..ops.temporal_attention import temporal_attention_unsupported_reason
from .layout import head_dim_of
from .residual_adds import feed_forward_plus_residual, temporal_attention_plus_residual
from .temporal import attend_over_frames

__all__ = ["REPRODUCED_PROCESSORS", "Modulation", "attention_call_reason", "block_over_frames", "block_unsupported_reason",
           "feed_forward", "self_attentions_over_frames"]

NORM_TYPES = ("layer_norm", "ada_norm_single")
# diffusers' default attention processors: the math the blocks here reproduce (any other processor's is its own)
REPRODUCED_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")


def _block_types() -> tuple[type, ...]:
    from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock

    return BasicTransformerBlock, FreeNoiseTransformerBlock


def block_unsupported_reason(block: nn.Module, where: str = "block") -> str | None:
    """Why the functions here cannot compute ``block`` as diffusers does (naming ``where``), or None.

    Served: a ``BasicTransformerBlock`` or FreeNoise's ``FreeNoiseTransformerBlock`` used as a
    temporal layer: norm type ``layer_norm`` (motion modules) or ``ada_norm_single`` (Latte; one
    attention), self-attention only, no gated (GLIGEN) fuser, an optional sinusoidal position
    table, and head dims the temporal kernel serves.
    """
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    if not isinstance(block, _block_types()):
        return f"{where}: expected a BasicTransformerBlock or FreeNoiseTransformerBlock, got {type(block).__name__}"
    if block.norm_type not in NORM_TYPES:
        return f"{where}: norm_type {block.norm_type!r} is not one of {', '.join(map(repr, NORM_TYPES))}"
    if block.only_cross_attention or hasattr(block, "fuser"):
        return f"{where}: cross-attention-only and gated blocks are not temporal self-attention"
    if block.pos_embed is not None and not isinstance(block.pos_embed, SinusoidalPositionalEmbedding):
        return f"{where}.pos_embed: expected None or SinusoidalPositionalEmbedding, got {type(block.pos_embed).__name__}"
    if block.norm_type == "ada_norm_single" and block.attn2 is not None:
        return f"{where}: an ada_norm_single block with a second attention is not a temporal layer vidgen runs"
    for name in ("attn1", "attn2"):
        attn = getattr(block, name)
        if attn is None:
            continue
        if attn.is_cross_attention:
            return f"{where}.{name}: expected self-attention, got cross-attention"
        reason = temporal_attention_unsupported_reason(head_dim_of(attn))
        if reason is not None:
            return f"{where}.{name}: {reason}"
    return None


def attention_call_reason(attn: nn.Module, dtype: torch.dtype, also_reproduced: tuple[str, ...] = ()) -> str | None:
    """Why a call of a block's attention ``attn`` on ``dtype`` activations must run diffusers' forward
    instead (asked at each call: processors and hooks may change after patching), or None: a hook
    replaced its forward (only calling the module runs the hook), its processor is one whose math
    is not reproduced here (xformers, fused QKV projections, a user's; ``also_reproduced`` names
    more that the caller computes), or the temporal kernel does not take the head dim or dtype."""
    if "forward" in attn.__dict__:
        return "a hook (a cache, offloading) replaced an attention module's forward"
    name = type(attn.processor).__name__
    if name not in REPRODUCED_PROCESSORS + also_reproduced:
        return f"its attention processor is {name}, which the fused forward does not reproduce"
    return temporal_attention_unsupported_reason(head_dim_of(attn), dtype)


class Modulation(NamedTuple):
    """``ada_norm_single``'s per-video shifts, scales and gates, each (B, 1, 1, C): broadcast over a
    (B, F, N, C) video view exactly as diffusers broadcasts them over (B*N, F, C) tokens."""

    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor

    @classmethod
    def of(cls, block: nn.Module, timestep: torch.Tensor) -> "Modulation":
        """From the block's ``scale_shift_table`` (6, C) and the model's timestep embedding (B, 6*C):
        the same sum diffusers forms per token, formed once per video."""
        table = block.scale_shift_table[None] + timestep.reshape(timestep.shape[0], 6, -1)  # (B, 6, C)
        return cls(*(part.unsqueeze(1) for part in table.chunk(6, dim=1)))


def _attention(attn: nn.Module, normed: torch.Tensor, table: torch.Tensor | None, identity_videos: int) -> torch.Tensor:
    """``attn`` over the frames of ``normed`` (B, F, N, C), fresh from a norm: flattening it is free."""
    videos, frames = normed.shape[:2]
    out = attend_over_frames(attn, normed.flatten(0, 1), frames, table, identity_videos)
    return out.unflatten(0, (videos, frames))


def _attention_plus(name: str, attn: nn.Module, normed: torch.Tensor, table: torch.Tensor | None,
                    identity_videos: int, video: torch.Tensor) -> torch.Tensor:
    """``_attention(...) + video``, the add in the output projection's epilogue where it can take it
    (:func:`~vidgen.integration.residual_adds.temporal_attention_plus_residual`)."""
    videos, frames = normed.shape[:2]
    out = temporal_attention_plus_residual(name, attn, normed.flatten(0, 1), frames, video.flatten(0, 1), table,
                                           identity_videos)
    return out.unflatten(0, (videos, frames))


def self_attentions_over_frames(block: nn.Module, video: torch.Tensor, *, identity_videos: tuple[int, int] = (0, 0),
                                modulation: Modulation | None = None, residual_adds: bool = False) -> torch.Tensor:
    """The attention half of ``block`` on a (B, F, N, C) video view: ``attn1`` (and ``attn2``, a
    second self-attention) with their norms, position table, modulation and residuals.

    ``identity_videos``: per attention, how many of the last videos get identity attention (PAG's
    perturbed branch; see :func:`~vidgen.integration.temporal.temporal_self_attention`).
    ``residual_adds``: each residual add in its attention's output projection (``patch(residual_adds=True)``;
    not the gated adds of a modulated block). Returns a new (B, F, N, C) tensor.
    """
    table = block.pos_embed.pe[0] if block.pos_embed is not None else None  # (max_seq_length, C)
    normed = block.norm1(video)
    if modulation is not None:
        normed = normed * (1 + modulation.scale_msa) + modulation.shift_msa
        video = modulation.gate_msa * _attention(block.attn1, normed, table, identity_videos[0]) + video
    elif residual_adds:
        video = _attention_plus("attn1", block.attn1, normed, table, identity_videos[0], video)
    else:
        video = _attention(block.attn1, normed, table, identity_videos[0]) + video
    if block.attn2 is not None:  # layer_norm blocks only (block_unsupported_reason)
        if residual_adds:
            return _attention_plus("attn2", block.attn2, block.norm2(video), table, identity_videos[1], video)
        video = _attention(block.attn2, block.norm2(video), table, identity_videos[1]) + video
    return video


def feed_forward(block: nn.Module, video: torch.Tensor, modulation: Modulation | None = None,
                 residual_adds: bool = False) -> torch.Tensor:
    """The feed-forward half of ``block`` with its norm, modulation and residual, on (B, F, N, C)
    (``residual_adds``: the add in the last Linear's epilogue, as in :func:`self_attentions_over_frames`)."""
    if modulation is None:
        if residual_adds:
            return feed_forward_plus_residual("ff", block.ff, block.norm3(video), video)
        return block.ff(block.norm3(video)) + video
    # ada_norm_single blocks normalise the feed-forward's input with norm2 (there is no norm3)
    normed = block.norm2(video) * (1 + modulation.scale_mlp) + modulation.shift_mlp
    return modulation.gate_mlp * block.ff(normed) + video


def block_over_frames(block: nn.Module, video: torch.Tensor, *, identity_videos: tuple[int, int] = (0, 0),
                      modulation: Modulation | None = None, residual_adds: bool = False) -> torch.Tensor:
    """diffusers' ``BasicTransformerBlock.forward`` as a temporal layer on a (B, F, N, C) video view
    (which :func:`block_unsupported_reason` accepts); returns a new (B, F, N, C) tensor."""
    video = self_attentions_over_frames(block, video, identity_videos=identity_videos, modulation=modulation,
                                        residual_adds=residual_adds)
    return feed_forward(block, video, modulation, residual_adds)
