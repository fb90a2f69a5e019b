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
diffusers' forward runs it (the module called, then the add) and says why once: another attention
processor (xformers, IP-Adapter, Stable Video Diffusion's single-token cross-attention, a user's),
a mask or ``cross_attention_kwargs``, forward chunking, a hook that replaced the attention's or
the feed-forward's forward (a cache, offloading), a projection that is no longer a plain
``nn.Linear`` (LoRA) or carries a hook, active dropout after a projection. Calls of 4-D
activations, under autocast or in a dtype the kernel does not take run diffusers' forward whole;
blocks of another structure (ada-norm, GLIGEN, positional embeddings, FreeNoise's blocks) are not
patched, with a reason. Tune-A-Video's ``VideoTransformerBlock`` (a BasicTransformerBlock plus
temporal attention, vidgen's frame attention as ``attn1``) gets :class:`VideoResidualBlockForward`;
vidgen's frame attention computes its own core (``FrameAttnProcessor.attention_core``).
"""
from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward, _chunked_feed_forward
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..ops import _fallback
from ..ops.linear_residual import linear_residual, linear_residual_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward
from .processors import FrameAttnProcessor, sdpa_attention_core
from .video_unet import VideoTransformerBlock

__all__ = ["ResidualBlockForward", "VideoResidualBlockForward", "patch_residual_adds",
           "residual_block_unsupported_reason", "unpatch_residual_adds"]


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


def _attention_reason(name: str, attn: nn.Module, context, mask, kwargs: dict, dtype: torch.dtype) -> str | None:
    """Why the residual add after attention ``name`` stays a separate add (None: it is fused).
    The attention core (:func:`_attention_core`) is diffusers' ``AttnProcessor2_0``'s, or vidgen's
    frame attention's (Tune-A-Video's ``attn1``), which takes ``num_frames``."""
    processor = attn.processor
    if type(processor) is FrameAttnProcessor:
        if context is not None or mask is not None or set(kwargs) - {"num_frames"}:
            return f"{name} (frame attention) is called with a context, a mask or arguments other than num_frames"
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


def _feed_forward_reason(block: BasicTransformerBlock, dtype: torch.dtype) -> str | None:
    """Why the residual add after the feed-forward stays a separate add (None: it is fused)."""
    ff = block.ff
    if block._chunk_size is not None:
        return "feed-forward chunking is on"
    if not isinstance(ff, FeedForward) or len(ff.net) < 3:
        return f"the feed-forward is a {type(ff).__name__}, not diffusers' FeedForward"
    if _replaced(ff):
        return "a hook is on the feed-forward"
    return _projection_reason("ff.net.2", ff.net[2], list(ff.net[3:]), dtype)


def _call_reason(block: BasicTransformerBlock, hidden_states: torch.Tensor, cross_attention_kwargs) -> str | None:
    """Why this call runs diffusers' forward whole (None: the fused forward reproduces it)."""
    reason = residual_block_unsupported_reason(block)
    if reason is not None:
        return reason
    if hidden_states.dim() != 3:
        return f"hidden_states of {hidden_states.dim()} dims (expected (batch, tokens, C))"
    if cross_attention_kwargs and "gligen" in cross_attention_kwargs:
        return "called with GLIGEN inputs"
    device = hidden_states.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return "autocast is on (it picks the projections' precision per call)"
    return linear_residual_unsupported_reason(hidden_states.dtype)


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
    reason = _attention_reason(name, attn, context, mask, kwargs, residual.dtype)
    if reason is not None:
        _unfused(name, reason)
        return attn(normed, encoder_hidden_states=context, attention_mask=mask, **kwargs) + residual
    projection = attn.to_out[0]
    return linear_residual(_attention_core(attn, normed, context, kwargs), projection.weight, projection.bias,
                           residual)


def _attention_core(attn: nn.Module, normed: torch.Tensor, context, kwargs: dict) -> torch.Tensor:
    """What ``attn``'s processor computes before the output projection (one :func:`_attention_reason` accepts)."""
    if type(attn.processor) is FrameAttnProcessor:
        return attn.processor.attention_core(attn, normed, **kwargs)
    return sdpa_attention_core(attn, normed, context)


def _feed_forward_half(block: BasicTransformerBlock, normed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``ff(normed) + residual``, the add in the last Linear's epilogue where :func:`_feed_forward_reason`
    allows, else as diffusers' forward computes it."""
    ff = block.ff
    reason = _feed_forward_reason(block, residual.dtype)
    if reason is not None:
        _unfused("the feed-forward", reason)
        if block._chunk_size is not None:
            return _chunked_feed_forward(ff, normed, block._chunk_dim, block._chunk_size) + residual
        return ff(normed) + residual
    inner = normed
    for module in ff.net[:2]:  # the activation (a fused GEGLU's forward included) and dropout
        inner = module(inner)
    return linear_residual(inner, ff.net[2].weight, ff.net[2].bias, residual)


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
        return _feed_forward_half(block, block.norm3(hidden_states), hidden_states)


class VideoResidualBlockForward(ResidualBlockForward):
    """Tune-A-Video's :class:`~vidgen.integration.video_unet.VideoTransformerBlock` with fused residual
    adds: its forward (frame attention, text attention, feed-forward, temporal attention, each plus
    its residual) with the first three adds fused where their projections can take them. The
    temporal attention's output projection runs inside
    :func:`~vidgen.integration.temporal.temporal_self_attention` (vidgen's processor) or after a
    layout copy (the reference one), so its add stays a separate one, by design."""

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
        hidden_states = _feed_forward_half(block, block.norm3(hidden_states), hidden_states)
        return block.attn_temp(block.norm_temp(hidden_states), **frames) + hidden_states


_FORWARDS = {BasicTransformerBlock: ResidualBlockForward, VideoTransformerBlock: VideoResidualBlockForward}


def patch_residual_adds(block: nn.Module) -> nn.Module:
    """Install :class:`ResidualBlockForward` on ``block`` (a diffusers ``BasicTransformerBlock``;
    :class:`VideoResidualBlockForward` on a ``VideoTransformerBlock``); idempotent; returns it."""
    return install_forward(block, _FORWARDS.get(type(block), ResidualBlockForward),
                           residual_block_unsupported_reason(block), (BasicTransformerBlock,), argument="block")


def unpatch_residual_adds(block: nn.Module) -> nn.Module:
    return restore_forward(block, ResidualBlockForward)
