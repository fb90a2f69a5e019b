"""Every attention processor vidgen puts into a diffusers model, and the fallback rule they share.

A processor is set per module (``attn.set_processor(...)``, or by name through
``unet.set_attn_processor({...})``); it keeps the module's own weights and settings, so swapping
one in changes the speed, not the model. By role (METHODS.md sections 1, 2 and 7):

* frame attention (self-attention across frames, ``attn1``): :class:`FrameAttnProcessor`
  (vidgen's frame-sparse kernel on the UNet's ``(B*F, N, C)`` layout), and
  :class:`ReferenceFrameAttnProcessor`, Tune-A-Video's formulation in eager PyTorch (K and V of
  the key frames gathered by copy, then SDPA); :class:`FirstFrameAttnProcessor` stands in for
  Text2Video-Zero's cross-frame processors;
* temporal attention (self-attention over the frame axis, ``attn_temp``, motion modules):
  :func:`temporal_self_attention` and its processor :class:`TemporalAttnProcessor` (vidgen's
  kernel reading the projections in place), and :class:`ReferenceTemporalAttnProcessor`
  (``(b f) n c -> (b n) f c`` copies around SDPA).

The reference processors are what "diffusers' default modules" means for the inflated video
UNet in benchmarks, and its ``unpatched`` state.

The frame count arrives as the ``num_frames`` keyword (the video UNet passes it; a user may
construct a :class:`FrameAttnProcessor` with it) and is checked once, where it enters, by
:func:`videos_in`. A call whose head dim or dtype no kernel serves computes the same attention
in eager PyTorch and says so once (:class:`KernelFallbackWarning`), the way xformers' dispatch
ends in PyTorch's own attention. Asking (``*_gap``) costs two host integers and a dtype
comparison: no device synchronisation.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from ..ops.frame_attention import (FRAME_MODES, PRECISIONS, frame_attention, frame_attention_gap,
                                   frame_attention_reference, key_frames_for)
from ..ops.temporal_attention import temporal_attention, temporal_attention_gap, temporal_attention_reference

__all__ = ["FRAME_MODES", "FirstFrameAttnProcessor", "FrameAttnProcessor", "KernelFallbackWarning",
           "ReferenceFrameAttnProcessor", "ReferenceTemporalAttnProcessor", "TemporalAttnProcessor",
           "frame_processor", "temporal_processor", "temporal_self_attention", "videos_in"]


# -- fallback and frame count --------------------------------------------------------------------
class KernelFallbackWarning(UserWarning):
    """A vidgen processor computed an attention in eager PyTorch because no kernel serves its shape."""


_said: set[tuple[str, str]] = set()
_said_lock = threading.Lock()


def warn_once(what: str, reason: str, instead: str) -> None:
    """Warn that ``what`` ran ``instead`` of vidgen's kernel because ``reason``, once per process
    for each (what, reason): a UNet makes the same call in every layer and every step."""
    with _said_lock:
        if (what, reason) in _said:
            return
        _said.add((what, reason))
    warnings.warn(f"vidgen: {what} runs {instead}: {reason}. The result is the same; only this "
                  "call is not accelerated (said once per process).", KernelFallbackWarning, stacklevel=3)


def forget_warnings() -> None:
    """Let every fallback warn again (tests use it to see each warning)."""
    with _said_lock:
        _said.clear()


def head_dim_of(attn) -> int:
    """The head dim of a diffusers ``Attention`` module, from its configuration (no forward needed)."""
    return attn.inner_dim // attn.heads


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
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_frames, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_frames, channel, height * width).transpose(1, 2)
        batch_frames, tokens, _ = hidden_states.shape
        videos = videos_in(batch_frames, num_frames, "FrameAttnProcessor")
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
            out = frame_attention(q, k, v, key_frames, scale=attn.scale, precision=self._precision_for(q))
        else:
            warn_once("frame attention", gap, "in eager PyTorch")
            out = frame_attention_reference(q, k, v, key_frames, attn.scale)[0]
        hidden_states = out.view(batch_frames, tokens, heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_frames, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * D) -> (batch, heads, tokens, D), a view."""
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, D) -> (batch, tokens, heads * D)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


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
    dim or dtype outside its range: said once, as a :class:`~vidgen.KernelFallbackWarning`).
    """

    def __init__(self, original, precision: str = "auto"):
        self.original = original
        self.batch_size = original.batch_size
        self.first_frame = FrameAttnProcessor(mode="first_frame", precision=precision)

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        gap = frame_attention_gap(head_dim_of(attn), hidden_states.dtype)
        if gap is not None:
            warn_once("Text2Video-Zero cross-frame attention", gap, f"diffusers' {type(self.original).__name__}")
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        num_frames = max(1, hidden_states.shape[0] // self.batch_size)  # Text2Video-Zero's "(b f)" batch
        return self.first_frame(attn, hidden_states, num_frames=num_frames)


# -- temporal attention -------------------------------------------------------------------------
def _split_heads(x: torch.Tensor, batch: int, num_frames: int, heads: int) -> torch.Tensor:
    """(B*F, N, H*D) -> (B, F, N, H, D) view (no copy for any strides the projections give)."""
    _, tokens, inner = x.shape
    return x.unflatten(0, (batch, num_frames)).unflatten(-1, (heads, inner // heads))


def temporal_self_attention(attn: nn.Module, hidden_states: torch.Tensor, num_frames: int,
                            *, positional_embedding: torch.Tensor | None = None,
                            identity_videos: int = 0) -> torch.Tensor:
    """Run diffusers ``Attention`` ``attn`` as self-attention over frames, in the image layout.

    Equivalent to ``rearrange(h, "(b f) n c -> (b n) f c")``, ``attn(h)`` and the inverse
    rearrange, without the two copies: q, k and v come from ``attn.to_q/to_k/to_v`` on the
    (B*F, N, C) tokens and are read in place by the temporal attention kernel.

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
    (see :func:`vidgen.ops.temporal_attention.temporal_attention_gap`) run the op's eager PyTorch reference
    on the same views, with a warning once.
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
        gap = temporal_attention_gap(q.shape[-1], q.dtype)
        if gap is None:
            out = temporal_attention(q, k, values, scale=attn.scale)
        else:
            warn_once("temporal attention", gap, "in eager PyTorch")
            out = temporal_attention_reference(q, k, values, attn.scale)[0]
        if identity_videos:
            out = torch.cat([out, v[attended:]])
    else:
        out = v
    out = out.flatten(-2).flatten(0, 1)  # (B*F, N, H*D)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)  # dropout
    if attn.residual_connection:  # diffusers' residual is the attention's own input, embedding included
        out = out + attn_input
    return out / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else out


class TemporalAttnProcessor:
    """Self-attention over frames through vidgen's temporal-attention kernel, no layout copies."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, num_frames: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("temporal attention is self-attention: encoder_hidden_states and attention_mask must be None")
        return temporal_self_attention(attn, hidden_states, num_frames)


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


def frame_processor(mode: str, use_vidgen: bool, precision: str = "auto"):
    """The ``attn1`` processor of an inflated block."""
    return FrameAttnProcessor(mode=mode, precision=precision) if use_vidgen else ReferenceFrameAttnProcessor(mode)


def temporal_processor(use_vidgen: bool):
    """The ``attn_temp`` processor of an inflated block."""
    return TemporalAttnProcessor() if use_vidgen else ReferenceTemporalAttnProcessor()
