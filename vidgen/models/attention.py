"""Attention processors of the inflated UNet's two video roles: frame attention (``attn1``) and
temporal attention (``attn_temp``), each in two implementations with the same semantics.

* vidgen: :class:`vidgen.processors.FrameAttnProcessor` and :class:`TemporalAttnProcessor`, which
  run vidgen's fused kernels straight from the UNet's ``(B*F, N, C)`` layout.
* reference: :class:`ReferenceFrameAttnProcessor` and :class:`ReferenceTemporalAttnProcessor`, the
  Tune-A-Video formulation in eager PyTorch (METHODS.md sections 1 and 2): gather the key frames'
  K and V into a concatenated copy, or rearrange ``(b f) n c -> (b n) f c``, then SDPA. This is
  what "diffusers' default modules" means for this model in benchmarks and the ``unpatched``
  state of a :class:`~vidgen.models.VideoUNet`.

Every processor takes the frame count as the ``num_frames`` keyword (the UNet passes it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

FRAME_MODES = ("sparse_causal", "first_frame")


def key_frame_indices(mode: str, num_frames: int) -> list[list[int]]:
    """The frames whose keys/values the queries of frame ``f`` see, per ``f`` (METHODS.md section 1)."""
    if mode == "first_frame":
        return [[0] for _ in range(num_frames)]
    if mode == "sparse_causal":
        # Tune-A-Video concatenates frame 0 and frame max(f - 1, 0): frames 0 and 1 see frame 0 twice.
        return [[0, max(f - 1, 0)] for f in range(num_frames)]
    raise ValueError(f"mode: expected one of {', '.join(FRAME_MODES)}, got {mode!r}")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * D) -> (batch, heads, tokens, D), a view."""
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, D) -> (batch, tokens, heads * D)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _check_frames(hidden_states: torch.Tensor, num_frames: int | None, role: str) -> int:
    if num_frames is None or num_frames < 1:
        raise ValueError(f"{role}: expected num_frames >= 1 (the video UNet passes it), got {num_frames}")
    if hidden_states.shape[0] % num_frames:
        raise ValueError(f"{role}: batch {hidden_states.shape[0]} is not a multiple of num_frames={num_frames}")
    return num_frames


class ReferenceFrameAttnProcessor:
    """Sparse-causal / first-frame self-attention as Tune-A-Video computes it (K, V gathered by copy)."""

    def __init__(self, mode: str = "sparse_causal"):
        key_frame_indices(mode, 1)  # validates
        self.mode = mode

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.mode} frame attention is self-attention: encoder_hidden_states and attention_mask must be None")
        frames = _check_frames(hidden_states, num_frames, "frame attention")
        batch_frames, tokens, _ = hidden_states.shape
        videos = batch_frames // frames
        table = key_frame_indices(self.mode, frames)
        query = attn.to_q(hidden_states)

        def gather(x: torch.Tensor) -> torch.Tensor:
            x = x.view(videos, frames, tokens, -1)
            keyed = torch.cat([x[:, [row[j] for row in table]] for j in range(len(table[0]))], dim=2)
            return keyed.reshape(batch_frames, tokens * len(table[0]), -1)

        key, value = gather(attn.to_k(hidden_states)), gather(attn.to_v(hidden_states))
        out = F.scaled_dot_product_attention(_heads(query, attn.heads), _heads(key, attn.heads),
                                             _heads(value, attn.heads), scale=attn.scale)
        return attn.to_out[1](attn.to_out[0](_merge_heads(out).to(query.dtype)))


class ReferenceTemporalAttnProcessor:
    """Self-attention over frames as Tune-A-Video computes it: rearrange copies around SDPA."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("temporal attention is self-attention: encoder_hidden_states and attention_mask must be None")
        frames = _check_frames(hidden_states, num_frames, "temporal attention")
        batch_frames, tokens, channels = hidden_states.shape
        videos = batch_frames // frames
        # "(b f) d c -> (b d) f c"
        seq = hidden_states.view(videos, frames, tokens, channels).transpose(1, 2).reshape(videos * tokens, frames, channels)
        q, k, v = (_heads(proj(seq), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, scale=attn.scale)).to(seq.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        # "(b d) f c -> (b f) d c"
        return out.view(videos, tokens, frames, channels).transpose(1, 2).reshape(batch_frames, tokens, channels)


class TemporalAttnProcessor:
    """Self-attention over frames through vidgen's temporal-attention kernel, no layout copies."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        from ..modules import temporal_self_attention

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("temporal attention is self-attention: encoder_hidden_states and attention_mask must be None")
        return temporal_self_attention(attn, hidden_states, _check_frames(hidden_states, num_frames, "temporal attention"))


def frame_processor(mode: str, use_vidgen: bool):
    """The ``attn1`` processor of an inflated block."""
    if not use_vidgen:
        return ReferenceFrameAttnProcessor(mode)
    from ..processors import FrameAttnProcessor

    return FrameAttnProcessor(mode=mode)


def temporal_processor(use_vidgen: bool):
    """The ``attn_temp`` processor of an inflated block."""
    return TemporalAttnProcessor() if use_vidgen else ReferenceTemporalAttnProcessor()
