"""Every attention processor vidgen puts into a diffusers model.

A processor is set per module (``attn.set_processor(...)``, or by name through
``unet.set_attn_processor({...})``); it keeps the module's own weights and settings, so swapping
one in changes the speed, not the model. By role (METHODS.md sections 1, 2 and 7):

* frame attention (self-attention across frames, ``attn1``): :class:`FrameAttnProcessor`
  (vidgen's frame-sparse kernel on the UNet's ``(B*F, N, C)`` layout), and
  :class:`ReferenceFrameAttnProcessor`, Tune-A-Video's formulation in eager PyTorch (K and V of
  the key frames gathered by copy, then SDPA); :class:`FirstFrameAttnProcessor` stands in for
  Text2Video-Zero's cross-frame processors;
* temporal attention (self-attention over the frame axis, ``attn_temp``):
  :class:`TemporalAttnProcessor` (vidgen's kernel reading the projections in place,
  :mod:`vidgen.integration.temporal`), and :class:`ReferenceTemporalAttnProcessor`
  (``(b f) n c -> (b n) f c`` copies around SDPA);
* cross-attention against one context token (Stable Video Diffusion's image embedding):
  :class:`SingleTokenCrossAttnProcessor`, the value projection of the context without scores.

The reference processors are what "diffusers' default modules" means for the inflated video
UNet in benchmarks, and its ``unpatched`` state.

A call whose head dim or dtype no kernel serves computes the same attention in eager PyTorch and
says so once (:class:`~vidgen.FallbackWarning`), the way xformers' dispatch ends in PyTorch's own
attention. Asking (``frame_attention_unsupported_reason``) costs two host integers and a dtype
comparison: no device synchronisation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..ops._fallback import warn_once
from ..ops.frame_attention import (FRAME_MODES, PRECISIONS, frame_attention, frame_attention_reference,
                                   frame_attention_unsupported_reason, key_frames_for)
from .frame_parallel import active_shard
from .layout import head_dim_of, videos_in
from .temporal import temporal_self_attention

__all__ = ["FirstFrameAttnProcessor", "FrameAttnProcessor", "ReferenceFrameAttnProcessor",
           "ReferenceTemporalAttnProcessor", "SingleTokenCrossAttnProcessor", "TemporalAttnProcessor",
           "frame_processor", "sdpa_attention_core", "temporal_processor"]


# -- frame attention ----------------------------------------------------------------------------
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
        precision: ``"auto"`` or ``"fp8"`` (see :func:`vidgen.ops.frame_attention`): fp8 scores for
            inference in fp16/bf16; a call it cannot serve (autograd recording, fp32) runs in the
            inputs' precision and says so once.
    """

    def __init__(self, mode: str | Sequence[Sequence[int]] | torch.Tensor = "sparse_causal",
                 num_frames: int | None = None, precision: str = "auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
        self.precision = precision
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
        if num_frames is not None:
            videos_in(num_frames, num_frames)  # a positive int
        self.mode = mode
        self.num_frames = num_frames

    def __repr__(self) -> str:
        precision = f", precision={self.precision!r}" if self.precision != "auto" else ""
        return f"FrameAttnProcessor(mode={self.mode!r}, num_frames={self.num_frames}{precision})"

    def _precision_for(self, q: torch.Tensor) -> str:
        if self.precision != "fp8":
            return self.precision
        if q.dtype not in (torch.float16, torch.bfloat16):
            reason = f"fp8 scores take fp16/bf16 activations, got {q.dtype}"
        elif torch.is_grad_enabled() and q.requires_grad:
            reason = "fp8 attention is inference-only and autograd is recording"
        else:
            return "fp8"
        warn_once("frame attention at precision='fp8'", reason, "in the activations' precision")
        return "auto"

    def _key_frames(self, num_frames: int):
        if self.key_frames is None:
            return key_frames_for(self.mode, num_frames)
        if num_frames != len(self.key_frames):
            raise ValueError(f"num_frames={num_frames} does not match the key-frame table's "
                             f"{len(self.key_frames)} rows")
        return self.key_frames

    def key_frames_of(self, k: torch.Tensor, v: torch.Tensor, num_frames: int):
        """What the queries of a call read: a function returning ``(k, v, key_frames)``, the keys and values
        of this call's own frames and the table into them. A frame-parallel shard's processor
        (:mod:`vidgen.integration.frame_parallel`) adds frames other processes hold, starting their
        transfer here and waiting for it in the returned function, after the query projection."""
        shard = active_shard()
        if shard is not None:  # frame-parallel: the table is the whole video's, some key frames are elsewhere
            return shard.keys_for(self._key_frames(shard.num_frames), k, v)
        key_frames = self._key_frames(num_frames)
        return lambda: (k, v, key_frames)

    def attention_core(self, attn, hidden_states: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """The attention up to the output projection: (B*F, N, C) tokens (after the module's spatial
        norm) -> (B*F, N, heads * D), what ``attn.to_out[0]`` takes (a fused transformer block
        adds its residual in that projection's epilogue: :mod:`vidgen.integration.residual_adds`)."""
        num_frames = num_frames if num_frames is not None else self.num_frames
        batch_frames, tokens, _ = hidden_states.shape
        videos = videos_in(batch_frames, num_frames, "FrameAttnProcessor")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        k = key.view(videos, num_frames, tokens, heads, head_dim)   # views, no copies
        v = value.view(videos, num_frames, tokens, heads, head_dim)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        keys = self.key_frames_of(k, v, num_frames)  # may start a transfer that the query projection overlaps
        q = attn.to_q(hidden_states).view(videos, num_frames, tokens, heads, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)

        k, v, key_frames = keys()
        reason = frame_attention_unsupported_reason(head_dim, q.dtype)
        if reason is None:
            out = frame_attention(q, k, v, key_frames, scale=attn.scale, precision=self._precision_for(q))
        else:
            warn_once("frame attention", reason, "in eager PyTorch")
            out = frame_attention_reference(q, k, v, key_frames, attn.scale)[0]
        return out.view(batch_frames, tokens, heads * head_dim)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("FrameAttnProcessor is for self-attention (attn1); got encoder_hidden_states, "
                             "so this module is a cross-attention: keep its default processor")
        if attention_mask is not None:
            raise ValueError("FrameAttnProcessor does not take an attention_mask (frame-sparse attention is "
                             "unmasked in every supported method)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_frames, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_frames, channel, height * width).transpose(1, 2)
        hidden_states = attn.to_out[1](attn.to_out[0](self.attention_core(attn, hidden_states, num_frames)))

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_frames, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        # diffusers divides by 1.0 too: a pass over the output that changes no value
        return hidden_states / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else hidden_states


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * D) -> (batch, heads, tokens, D), a view."""
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, D) -> (batch, tokens, heads * D)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def sdpa_attention_core(attn: Attention, hidden_states: torch.Tensor,
                        encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ``AttnProcessor2_0`` up to the output projection, for the calls a fused transformer
    block serves (3-D ``(batch, tokens, C)`` input, no mask, spatial or group norm, ``norm_cross``):
    the projections, ``norm_q``/``norm_k``, SDPA at its default scale as that processor calls it,
    and the heads merged, ``(batch, tokens, heads * D)``: what ``attn.to_out[0]`` takes."""
    query = attn.to_q(hidden_states)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    q, k, v = (_heads(x, attn.heads) for x in (query, attn.to_k(context), attn.to_v(context)))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)).to(query.dtype)


class ReferenceFrameAttnProcessor:
    """Frame attention as Tune-A-Video computes it: the key frames' K and V gathered into a
    concatenated copy (a frame listed twice is copied twice), then SDPA."""

    def __init__(self, mode: str = "sparse_causal"):
        key_frames_for(mode, 1)  # validates
        self.mode = mode

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.mode} frame attention is self-attention: encoder_hidden_states and attention_mask must be None")
        batch_frames, tokens, _ = hidden_states.shape
        videos = videos_in(batch_frames, num_frames, "frame attention")
        table = key_frames_for(self.mode, num_frames)
        query = attn.to_q(hidden_states)

        def gather(x: torch.Tensor) -> torch.Tensor:
            x = x.view(videos, num_frames, tokens, -1)
            keyed = torch.cat([x[:, [row[j] for row in table]] for j in range(len(table[0]))], dim=2)
            return keyed.reshape(batch_frames, tokens * len(table[0]), -1)

        key, value = gather(attn.to_k(hidden_states)), gather(attn.to_v(hidden_states))
        out = F.scaled_dot_product_attention(_heads(query, attn.heads), _heads(key, attn.heads),
                                             _heads(value, attn.heads), scale=attn.scale)
        return attn.to_out[1](attn.to_out[0](_merge_heads(out).to(query.dtype)))


class FirstFrameAttnProcessor:
    """Text2Video-Zero's cross-frame attention on vidgen's first-frame kernel.

    Same semantics as the processor it replaces (kept as ``original``): the batch is
    ``batch_size`` groups of ``frames = B // batch_size`` frames ("(b f)"), each frame's
    self-attention reads frame 0's keys and values. Calls with text (cross-attention) or a mask
    go to the original processor unchanged, and so do calls the kernel does not serve (a head
    dim or dtype outside its range: said once, as a :class:`~vidgen.FallbackWarning`).
    """

    def __init__(self, original, precision: str = "auto"):
        self.original = original
        self.batch_size = original.batch_size
        self.first_frame = FrameAttnProcessor(mode="first_frame", precision=precision)

    def kernel_unsupported_reason(self, attn: Attention, dtype: torch.dtype) -> str | None:
        """Why the first-frame kernel does not serve a self-attention call of ``attn`` on ``dtype``
        activations (the original processor runs it), or None."""
        return frame_attention_unsupported_reason(head_dim_of(attn), dtype)

    def attention_core(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        """The first-frame attention of a self-attention call the kernel serves, up to the output
        projection (:meth:`FrameAttnProcessor.attention_core`): what a fused transformer block
        (:mod:`vidgen.integration.residual_adds`) projects with the residual in the epilogue."""
        return self.first_frame.attention_core(attn, hidden_states, num_frames=self._frames_in(hidden_states))

    def _frames_in(self, hidden_states: torch.Tensor) -> int:
        return max(1, hidden_states.shape[0] // self.batch_size)  # Text2Video-Zero's "(b f)" batch

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        reason = self.kernel_unsupported_reason(attn, hidden_states.dtype)
        if reason is not None:
            warn_once("Text2Video-Zero cross-frame attention", reason, f"diffusers' {type(self.original).__name__}")
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.first_frame(attn, hidden_states, num_frames=self._frames_in(hidden_states))


# -- temporal attention -------------------------------------------------------------------------
class TemporalAttnProcessor:
    """Self-attention over frames through vidgen's temporal-attention kernel, no layout copies."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("temporal attention is self-attention: encoder_hidden_states and attention_mask must be None")
        shard = active_shard()
        if shard is None:
            return temporal_self_attention(attn, hidden_states, num_frames)
        # frame-parallel: attend over whole columns of frames of this rank's positions, then back
        positions = hidden_states.shape[1]
        columns = shard.to_positions(hidden_states)
        if columns.shape[1]:  # a rank may hold no position of a tiny map
            columns = temporal_self_attention(attn, columns, shard.num_frames)
        return shard.to_frames(columns, positions)


class ReferenceTemporalAttnProcessor:
    """Self-attention over frames as Tune-A-Video computes it: rearrange copies around SDPA."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("temporal attention is self-attention: encoder_hidden_states and attention_mask must be None")
        batch_frames, tokens, channels = hidden_states.shape
        videos = videos_in(batch_frames, num_frames, "temporal attention")
        # "(b f) d c -> (b d) f c"
        seq = hidden_states.view(videos, num_frames, tokens, channels).transpose(1, 2).reshape(
            videos * tokens, num_frames, channels)
        q, k, v = (_heads(proj(seq), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, scale=attn.scale)).to(seq.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        # "(b d) f c -> (b f) d c"
        return out.view(videos, tokens, num_frames, channels).transpose(1, 2).reshape(batch_frames, tokens, channels)


# -- cross-attention against one token --------------------------------------------------------------
class SingleTokenCrossAttnProcessor:
    """Cross-attention whose context is one token per batch entry, without scores.

    The softmax over a single key is exactly 1, so every query's output is the value projection of
    the context, ``to_out(to_v(context))``, whatever the queries: the query and key projections,
    the head split and the attention itself are skipped, and the (B, 1, C) result is broadcast
    over the queries (an expanded view, no copy; ``residual_connection`` and
    ``rescale_output_factor`` are applied as diffusers' processors apply them). Calls this does not
    cover run ``fallback``, the module's processor before: a context of more than one token or
    none, a mask, ``norm_cross``, a spatial norm, extra processor arguments, a batch that differs
    from the context's, or dropout in training (diffusers drops each query's output separately).
    """

    def __init__(self, fallback):
        self.fallback = fallback

    def _covers(self, attn: Attention, hidden_states: torch.Tensor, context, attention_mask, temb, extra) -> bool:
        return (isinstance(context, torch.Tensor) and context.dim() == 3 and context.shape[1] == 1
                and context.shape[0] == hidden_states.shape[0] and hidden_states.dim() in (3, 4)
                and attention_mask is None and temb is None and not extra and not attn.norm_cross
                and attn.spatial_norm is None and not (attn.training and attn.to_out[1].p > 0))

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if not self._covers(attn, hidden_states, encoder_hidden_states, attention_mask, temb, args or kwargs):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        value = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))  # (B, 1, C)
        if hidden_states.dim() == 4:  # (B, C, h, w) maps: the processors attend over h*w tokens
            out = value.transpose(1, 2).unsqueeze(-1).expand(-1, -1, *hidden_states.shape[2:])
        else:
            out = value.expand(-1, hidden_states.shape[1], -1)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else out


def frame_processor(mode: str, use_vidgen: bool, precision: str = "auto"):
    """The ``attn1`` processor of an inflated block."""
    return FrameAttnProcessor(mode=mode, precision=precision) if use_vidgen else ReferenceFrameAttnProcessor(mode)


def temporal_processor(use_vidgen: bool):
    """The ``attn_temp`` processor of an inflated block."""
    return TemporalAttnProcessor() if use_vidgen else ReferenceTemporalAttnProcessor()
