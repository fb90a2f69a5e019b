"""diffusers' ``BasicTransformerBlock`` with its residual adds in the output projections' epilogues
(:func:`vidgen.ops.linear_residual`).

An SD-style block (norm type ``layer_norm``: SD 1.x/2.x, AnimateDiff's and Stable Video
Diffusion's spatial blocks) ends both attentions and the feed-forward with ``h = proj(core) + h``:
``attn1.to_out[0]``, ``attn2.to_out[0]`` and ``ff.net[2]`` each write their output, then an add
reads it back with ``h`` and writes the sum. The add sits in ``BasicTransformerBlock.forward``,
the projection inside the attention processor and the ``FeedForward``, so no module below the
block can fuse them. :class:`ResidualBlockForward`, installed on one block instance, runs the
block's own modules up to each projection's input (the norms, the attention core as diffusers'
``AttnProcessor2_0`` computes it: :func:`~vidgen.integration.processors.sdpa_attention_core`,
the feed-forward's activation, a fused GEGLU included) and each projection with the residual in
its epilogue, from the modules' own weights (parameters and state dict untouched).

Each of the three adds is fused where its projection can take it; otherwise that half runs as
diffusers' forward runs it (the module called, then the add) and says why once: an attention
processor whose core is not computed here (xformers, IP-Adapter, Stable Video Diffusion's
single-token cross-attention, a user's; the cores computed are ``AttnProcessor2_0``'s, vidgen's
frame attention's, Text2Video-Zero's first-frame attention on vidgen's kernel and its
``CrossFrameAttnProcessor2_0`` on a cross-attention call, which is ``AttnProcessor2_0``'s),
a mask or ``cross_attention_kwargs``, forward chunking, a hook that replaced the attention's or
the feed-forward's forward (a cache, offloading), a projection that is no longer a plain
``nn.Linear`` (LoRA) or carries a hook, active dropout after a projection. Calls of 4-D
activations, under autocast or in a dtype the kernel does not take run diffusers' forward whole;
blocks of another structure (ada-norm, GLIGEN, positional embeddings, FreeNoise's blocks) are not
patched, with a reason. Tune-A-Video's ``VideoTransformerBlock`` (a BasicTransformerBlock plus
temporal attention, vidgen's frame attention as ``attn1``) gets :class:`VideoResidualBlockForward`;
vidgen's frame attention computes its own core (``FrameAttnProcessor.attention_core``).

The same halves serve the temporal blocks vidgen runs on the image layout, one at a time:
:func:`temporal_attention_plus_residual` (an attention over frames,
:func:`~vidgen.integration.temporal.temporal_attention_core`) and :func:`feed_forward_plus_residual`
(a feed-forward), used by the motion modules' blocks (:mod:`vidgen.integration.blocks`), Stable
Video Diffusion's temporal blocks (:func:`~vidgen.integration.svd.temporal_block_over_frames`) and
Tune-A-Video's ``attn_temp``.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward, _chunked_feed_forward
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..ops import _fallback
from ..ops.linear_residual import linear_residual, linear_residual_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward
from .frame_parallel import active_shard
from .processors import FirstFrameAttnProcessor, FrameAttnProcessor, TemporalAttnProcessor, sdpa_attention_core
from .temporal import attend_over_frames, temporal_attention_core
from .video_unet import VideoTransformerBlock

__all__ = ["ResidualBlockForward", "VideoResidualBlockForward", "feed_forward_plus_residual", "patch_residual_adds",
           "residual_block_unsupported_reason", "temporal_attention_plus_residual", "unpatch_residual_adds"]


def residual_block_unsupported_reason(block: nn.Module) -> str | None:
    """Why no forward here can reproduce ``block``'s (None: one can): diffusers' BasicTransformerBlock
    (:class:`ResidualBlockForward`) or Tune-A-Video's VideoTransformerBlock (:class:`VideoResidualBlockForward`)."""
    if type(block) not in _FORWARDS:  # other subclasses (FreeNoise's) have a forward of their own
        return f"expected diffusers' BasicTransformerBlock or a VideoTransformerBlock, got {type(block).__name__}"
    if block.norm_type != "layer_norm":
        return f"norm_type {block.norm_type!r} (only 'layer_norm' blocks are fused)"
    if block.only_cross_attention or block.pos_embed is not None or hasattr(block, "fuser"):
        return "cross-attention-only, positional-embedding and gated (GLIGEN) blocks are not fused"
    return None


def _replaced(module: nn.Module) -> bool:
    """Whether a hook (a cache, offloading: diffusers' and accelerate's hooks) replaced ``module``'s
    forward, which only calling the module runs. PyTorch's forward hooks of a module the fused half
    computes the inside of (the attention, the feed-forward) do not run, as for every fused forward
    (profilers' scopes see the block)."""
    return "forward" in module.__dict__


def _skipped(*modules: nn.Module) -> bool:
    """Whether not calling ``modules`` at all (the fused projection, the dropout after it) would skip
    something of theirs: a replaced forward or any hook."""
    return any(_replaced(m) or m._forward_hooks or m._forward_pre_hooks for m in modules)


def _projection_reason(path: str, linear: nn.Module, dropouts: list[nn.Module], dtype: torch.dtype) -> str | None:
    """Why the Linear at ``path`` cannot take the residual in its epilogue (None: it can).
    ``dropouts``: the modules between it and the add."""
    if type(linear) is not nn.Linear:
        return f"{path} is a {type(linear).__name__} (e.g. a LoRA layer), not a plain nn.Linear"
    if not all(isinstance(m, nn.Dropout) for m in dropouts):
        return f"{path} is followed by a {', '.join(type(m).__name__ for m in dropouts)}, not dropout"
    if _skipped(linear, *dropouts):
        return f"a hook is on {path} or the dropout after it"
    if any(m.training and m.p > 0 for m in dropouts):
        return f"the dropout after {path} is active (training mode)"
    if linear.weight.dtype != dtype:
        return f"activations in {dtype}, {path} weights in {linear.weight.dtype}"
    return None


def _is_cross_frame_processor(processor) -> bool:
    """Text2Video-Zero's ``CrossFrameAttnProcessor2_0`` (SD's pipeline's or SDXL's copy)."""
    kind = type(processor)
    return kind.__name__ == "CrossFrameAttnProcessor2_0" and kind.__module__.startswith("diffusers.")


def _attention_reason(name: str, attn: nn.Module, normed: torch.Tensor, context, mask, kwargs: dict
                      ) -> str | None:
    """Why the residual add after attention ``name`` stays a separate add (None: it is fused).
    The attention core (:func:`_attention_core`) is diffusers' ``AttnProcessor2_0``'s, vidgen's
    frame attention's (Tune-A-Video's ``attn1``, which takes ``num_frames``), Text2Video-Zero's
    first-frame attention on vidgen's kernel, or Text2Video-Zero's ``CrossFrameAttnProcessor2_0`` on
    a cross-attention call (``AttnProcessor2_0``'s math without ``norm_q``/``norm_k``)."""
    processor, dtype = attn.processor, normed.dtype
    if type(processor) is FrameAttnProcessor:
        if context is not None or mask is not None or set(kwargs) - {"num_frames"}:
            return f"{name} (frame attention) is called with a context, a mask or arguments other than num_frames"
    elif type(processor) is FirstFrameAttnProcessor:
        if context is not None or mask is not None or kwargs:
            return f"{name} (first-frame attention) is called with a context, a mask or cross_attention_kwargs"
        reason = processor.kernel_unsupported_reason(attn, dtype)
        if reason is not None:
            return f"{name} runs diffusers' cross-frame processor: {reason}"
    elif _is_cross_frame_processor(processor):
        if context is None or mask is not None or kwargs:
            return f"{name}'s cross-frame processor is called as self-attention, with a mask or cross_attention_kwargs"
        if context.shape[0] != normed.shape[0] or attn.norm_q is not None or attn.norm_k is not None:
            return f"{name}'s cross-frame processor is called on a context of another batch, or with norm_q/norm_k"
    elif type(processor) is not AttnProcessor2_0:
        return f"{name}'s processor is {type(processor).__name__}, whose attention the fused block does not compute"
    elif mask is not None or kwargs:
        return f"{name} is called with a mask or cross_attention_kwargs"
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross:
        return f"{name} normalises its input itself (spatial, group or cross norm)"
    if attn.residual_connection or attn.rescale_output_factor != 1.0:
        return f"{name} adds its own residual or rescales its output"
    if _replaced(attn):
        return f"a hook is on {name}"
    return _projection_reason(f"{name}.to_out.0", attn.to_out[0], list(attn.to_out[1:]), dtype)


def _temporal_attention_reason(name: str, attn: nn.Module, dtype: torch.dtype) -> str | None:
    """Why the residual add after ``name``, an attention over frames whose core vidgen computes
    (:func:`~vidgen.integration.temporal.temporal_attention_core`), stays a separate add (None: it
    is fused). Its caller decided that vidgen computes it (its processor, hooks)."""
    if attn.residual_connection or attn.rescale_output_factor != 1.0:
        return f"{name} adds its own residual or rescales its output"
    return _projection_reason(f"{name}.to_out.0", attn.to_out[0], list(attn.to_out[1:]), dtype)


def _feed_forward_reason(name: str, ff: nn.Module, chunk_size: int | None, dtype: torch.dtype) -> str | None:
    """Why the residual add after the feed-forward ``name`` stays a separate add (None: it is fused)."""
    if chunk_size is not None:
        return "feed-forward chunking is on"
    if not isinstance(ff, FeedForward) or len(ff.net) < 3:
        return f"{name} is a {type(ff).__name__}, not diffusers' FeedForward"
    if _replaced(ff):
        return f"a hook is on {name}"
    return _projection_reason(f"{name}.net.2", ff.net[2], list(ff.net[3:]), dtype)


def _activations_reason(hidden_states: torch.Tensor) -> str | None:
    """Why no projection can take a residual on this call's activations (None: one can)."""
    device = hidden_states.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return "autocast is on (it picks the projections' precision per call)"
    return linear_residual_unsupported_reason(hidden_states.dtype)


def _call_reason(block: BasicTransformerBlock, hidden_states: torch.Tensor, cross_attention_kwargs) -> str | None:
    """Why this call runs diffusers' forward whole (None: the fused forward reproduces it)."""
    reason = residual_block_unsupported_reason(block)
    if reason is not None:
        return reason
    if hidden_states.dim() != 3:
        return f"hidden_states of {hidden_states.dim()} dims (expected (batch, tokens, C))"
    if cross_attention_kwargs and "gligen" in cross_attention_kwargs:
        return "called with GLIGEN inputs"
    return _activations_reason(hidden_states)


def _say(what: str, reason: str, instead: str) -> None:
    """Warn once that ``what`` runs ``instead``: outside torch.compile's tracing only, where the
    warning's lock would break the block's graph (a compiled block decides once, when traced)."""
    if not torch.compiler.is_compiling():
        _fallback.warn_once(what, reason, instead)


def _unfused(what: str, reason: str) -> None:
    _say(f"the residual add after {what}", reason, "as a separate add")


def _attention_half(name: str, attn: nn.Module, normed: torch.Tensor, context, mask, kwargs: dict,
                    residual: torch.Tensor) -> torch.Tensor:
    """``attn(normed, context, mask, **kwargs) + residual``, the add in the output projection's
    epilogue where :func:`_attention_reason` allows, else as diffusers' forward computes it."""
    reason = _attention_reason(name, attn, normed, context, mask, kwargs)
    if reason is not None:
        _unfused(name, reason)
        return attn(normed, encoder_hidden_states=context, attention_mask=mask, **kwargs) + residual
    return _project_plus(attn, _attention_core(attn, normed, context, kwargs), residual)


def _project_plus(attn: nn.Module, core: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    projection = attn.to_out[0]
    return linear_residual(core, projection.weight, projection.bias, residual)


def _attention_core(attn: nn.Module, normed: torch.Tensor, context, kwargs: dict) -> torch.Tensor:
    """What ``attn``'s processor computes before the output projection (one :func:`_attention_reason` accepts)."""
    if type(attn.processor) is FrameAttnProcessor:
        return attn.processor.attention_core(attn, normed, **kwargs)
    if type(attn.processor) is FirstFrameAttnProcessor:
        return attn.processor.attention_core(attn, normed)
    return sdpa_attention_core(attn, normed, context)


def _feed_forward_half(name: str, ff: nn.Module, chunk: tuple[int | None, int], normed: torch.Tensor,
                       residual: torch.Tensor) -> torch.Tensor:
    """``ff(normed) + residual``, the add in the last Linear's epilogue where :func:`_feed_forward_reason`
    allows, else as diffusers' forward computes it. ``chunk``: the block's (chunk size, chunk dim)."""
    chunk_size, chunk_dim = chunk
    reason = _feed_forward_reason(name, ff, chunk_size, residual.dtype)
    if reason is not None:
        _unfused(name, reason)
        if chunk_size is not None:
            return _chunked_feed_forward(ff, normed, chunk_dim, chunk_size) + residual
        return ff(normed) + residual
    inner = normed
    for module in ff.net[:2]:  # the activation (a fused GEGLU's forward included) and dropout
        inner = module(inner)
    return linear_residual(inner, ff.net[2].weight, ff.net[2].bias, residual)


def temporal_attention_plus_residual(name: str, attn: nn.Module, normed: torch.Tensor, num_frames: int,
                                     residual: torch.Tensor, positional_embedding: torch.Tensor | None = None,
                                     identity_videos: int = 0) -> torch.Tensor:
    """``attend_over_frames(attn, normed, num_frames, positional_embedding, identity_videos) + residual``,
    the add in ``attn.to_out[0]``'s epilogue where the activations and the projection allow (else the
    separate add, said once).

    ``attn``: a self-attention over frames the caller runs on vidgen's temporal attention (it has
    checked the module and its processor); ``normed``, ``residual``: (B*F, N, C), frame fastest.
    """
    reason = _activations_reason(residual) or _temporal_attention_reason(name, attn, residual.dtype)
    if reason is not None:
        _unfused(name, reason)
        return attend_over_frames(attn, normed, num_frames, positional_embedding, identity_videos) + residual
    core, _ = temporal_attention_core(attn, normed, num_frames, positional_embedding, identity_videos)
    return _project_plus(attn, core, residual)


def feed_forward_plus_residual(name: str, ff: nn.Module, normed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``ff(normed) + residual`` for diffusers' ``FeedForward`` ``ff`` of a block that does not chunk
    it, the add in its last Linear's epilogue where the activations and the projection allow (else
    the separate add, said once)."""
    reason = _activations_reason(residual)
    if reason is not None:
        _unfused(name, reason)
        return ff(normed) + residual
    return _feed_forward_half(name, ff, (None, 0), normed, residual)


class ResidualBlockForward(InstanceForward):
    """A BasicTransformerBlock instance's forward with fused residual adds (see the module docstring)."""

    def __call__(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                 added_cond_kwargs=None) -> torch.Tensor:
        block = self.module
        reason = _call_reason(block, hidden_states, cross_attention_kwargs)
        if reason is not None:
            _say("a transformer block with fused residual adds", reason, "diffusers' forward")
            return self.unfused(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
        # layer_norm blocks read no timestep, class labels or added conditions (diffusers' forward neither)
        kwargs = dict(cross_attention_kwargs or {})
        hidden_states = _attention_half("attn1", block.attn1, block.norm1(hidden_states), None, attention_mask,
                                        kwargs, hidden_states)
        if block.attn2 is not None:
            hidden_states = _attention_half("attn2", block.attn2, block.norm2(hidden_states), encoder_hidden_states,
                                            encoder_attention_mask, kwargs, hidden_states)
        return _feed_forward_half("ff", block.ff, (block._chunk_size, block._chunk_dim), block.norm3(hidden_states),
                                  hidden_states)


class VideoResidualBlockForward(ResidualBlockForward):
    """Tune-A-Video's :class:`~vidgen.integration.video_unet.VideoTransformerBlock` with fused residual
    adds: its forward (frame attention, text attention, feed-forward, temporal attention, each plus
    its residual) with each add fused where its projection can take it. The temporal attention's is
    fused where vidgen's :class:`~vidgen.integration.processors.TemporalAttnProcessor` runs it on one
    process (its core: :func:`~vidgen.integration.temporal.temporal_attention_core`); the reference
    processor (a layout copy around SDPA) and frame-parallel shards keep the separate add."""

    def __call__(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                 added_cond_kwargs=None) -> torch.Tensor:
        block = self.module
        reason = "called with an attention_mask" if attention_mask is not None else \
            _call_reason(block, hidden_states, cross_attention_kwargs)
        if reason is not None:
            _say("a transformer block with fused residual adds", reason, "its own forward")
            return self.unfused(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
        frames = {"num_frames": block.frames.value}
        hidden_states = _attention_half("attn1", block.attn1, block.norm1(hidden_states), None, None, frames,
                                        hidden_states)
        if block.attn2 is not None:
            hidden_states = _attention_half("attn2", block.attn2, block.norm2(hidden_states), encoder_hidden_states,
                                            encoder_attention_mask, dict(cross_attention_kwargs or {}), hidden_states)
        hidden_states = _feed_forward_half("ff", block.ff, (block._chunk_size, block._chunk_dim),
                                           block.norm3(hidden_states), hidden_states)
        attn, normed = block.attn_temp, block.norm_temp(hidden_states)
        reason = _temporal_processor_reason(attn)
        if reason is not None:
            _unfused("attn_temp", reason)
            return attn(normed, **frames) + hidden_states
        return temporal_attention_plus_residual("attn_temp", attn, normed, frames["num_frames"], hidden_states)


def _temporal_processor_reason(attn: nn.Module) -> str | None:
    """Why the temporal attention ``attn_temp`` is not computed here (None: vidgen's
    :class:`~vidgen.integration.processors.TemporalAttnProcessor` would run it on one process)."""
    if type(attn.processor) is not TemporalAttnProcessor:
        return f"attn_temp's processor is {type(attn.processor).__name__}, whose attention the fused block does not compute"
    if active_shard() is not None:
        return "frame-parallel: attn_temp exchanges positions between processes"
    if _replaced(attn):
        return "a hook is on attn_temp"
    return None


_FORWARDS = {BasicTransformerBlock: ResidualBlockForward, VideoTransformerBlock: VideoResidualBlockForward}


def patch_residual_adds(block: nn.Module) -> nn.Module:
    """Install :class:`ResidualBlockForward` on ``block`` (a diffusers ``BasicTransformerBlock``;
    :class:`VideoResidualBlockForward` on a ``VideoTransformerBlock``); idempotent; returns it."""
    return install_forward(block, _FORWARDS.get(type(block), ResidualBlockForward),
                           residual_block_unsupported_reason(block), (BasicTransformerBlock,), argument="block")


def unpatch_residual_adds(block: nn.Module) -> nn.Module:
    return restore_forward(block, ResidualBlockForward)
