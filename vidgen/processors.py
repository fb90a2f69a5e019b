"""diffusers attention processors that run vidgen's fused kernels (METHODS.md section 7).

A processor is set per module (``attn.set_processor(...)``, or by name through
``unet.set_attn_processor({...})``); it keeps the module's own weights and settings, so
swapping one in changes the speed, not the model.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ._fallback import frame_attention_gap, warn_once
from .kernels import frame_attention as _tables
from .ops.frame_attention import frame_attention

FRAME_MODES = ("sparse_causal", "first_frame", "full")
_MODE_TABLES = {
    "sparse_causal": _tables.sparse_causal_key_frames,
    "first_frame": _tables.first_frame_key_frames,
    "full": _tables.full_key_frames,
}


class FrameAttnProcessor:
    """Frame-sparse *self*-attention for a diffusers ``Attention`` module inside a video UNet.

    The module sees frames folded into the batch, ``(B*F, N, C)`` (or ``(B*F, C, h, w)``),
    frame index fastest within each video. Queries of frame f attend to the keys of the
    frames of ``mode``:

    * ``"sparse_causal"``: frames 0 and ``max(f - 1, 0)`` (Tune-A-Video);
    * ``"first_frame"``: frame 0 (Text2Video-Zero's ``CrossFrameAttnProcessor``, LAMP);
    * ``"full"``: all F frames;
    * or an explicit (F, K) key-frame table (see :func:`vidgen.ops.frame_attention`).

    Otherwise it is diffusers' ``AttnProcessor2_0``: the module's ``spatial_norm``,
    ``group_norm``, ``to_q/to_k/to_v``, ``norm_q/norm_k``, ``to_out``, ``residual_connection``
    and ``rescale_output_factor``, and the module's ``scale`` (AttnProcessor2_0 lets SDPA use
    its default ``D ** -0.5``, equal to ``attn.scale`` unless the module sets another). Q, K
    and V are views of the projections' outputs and the output is already in the layout
    ``to_out`` takes: no permute or gather copies.

    Args:
        mode: one of ``"sparse_causal"``, ``"first_frame"``, ``"full"``, or a key-frame table.
        num_frames: F. May instead arrive per call through ``cross_attention_kwargs``
            (``{"num_frames": F}``), which takes precedence; with a table it defaults to the
            table's row count.
    """

    def __init__(self, mode: str | Sequence[Sequence[int]] | torch.Tensor = "sparse_causal",
                 num_frames: int | None = None):
        if isinstance(mode, str):
            if mode not in FRAME_MODES:
                raise ValueError(f"mode: expected one of {', '.join(map(repr, FRAME_MODES))} or a key-frame "
                                 f"table, got {mode!r}")
            self.key_frames = None
        else:
            rows = mode.tolist() if isinstance(mode, torch.Tensor) else [list(row) for row in mode]
            if num_frames is not None and num_frames != len(rows):
                raise ValueError(f"num_frames={num_frames} does not match the key-frame table's {len(rows)} rows")
            num_frames = len(rows)
            self.key_frames = rows
            mode = "table"
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)
                                       or num_frames < 1):
            raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
        self.mode = mode
        self.num_frames = num_frames

    def __repr__(self) -> str:
        return f"FrameAttnProcessor(mode={self.mode!r}, num_frames={self.num_frames})"

    def _key_frames(self, num_frames: int):
        if self.key_frames is None:
            return _MODE_TABLES[self.mode](num_frames)
        if num_frames != len(self.key_frames):
            raise ValueError(f"num_frames={num_frames} does not match the key-frame table's "
                             f"{len(self.key_frames)} rows")
        return self.key_frames

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("FrameAttnProcessor is for self-attention (attn1); got encoder_hidden_states, "
                             "so this module is a cross-attention: keep its default processor")
        if attention_mask is not None:
            raise ValueError("FrameAttnProcessor does not take an attention_mask (frame-sparse attention is "
                             "unmasked in every supported method)")
        num_frames = num_frames if num_frames is not None else self.num_frames
        if num_frames is None:
            raise ValueError("FrameAttnProcessor needs the frame count: pass num_frames= to the processor or "
                             "cross_attention_kwargs={'num_frames': F} to the UNet call")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_frames, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_frames, channel, height * width).transpose(1, 2)
        batch_frames, tokens, _ = hidden_states.shape
        if batch_frames % num_frames:
            raise ValueError(f"num_frames={num_frames} does not divide the batch of {batch_frames} frames "
                             "(expected (B*F, N, C) with frames folded into the batch)")
        videos = batch_frames // num_frames
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        q = query.view(videos, num_frames, tokens, heads, head_dim)   # views, no copies
        k = key.view(videos, num_frames, tokens, heads, head_dim)
        v = value.view(videos, num_frames, tokens, heads, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        key_frames = self._key_frames(num_frames)
        gap = frame_attention_gap(head_dim, q.dtype)
        if gap is None:
            out = frame_attention(q, k, v, key_frames, scale=attn.scale)
        else:
            warn_once("frame attention", gap, "in eager PyTorch")
            out = _tables.frame_attention_reference(q, k, v, key_frames, attn.scale)[0]
        hidden_states = out.view(batch_frames, tokens, heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_frames, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
