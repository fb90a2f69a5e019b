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

Any call it cannot reproduce exactly runs diffusers' forward and says why once: another
attention processor (xformers, IP-Adapter, a user's), a mask or ``cross_attention_kwargs``,
forward chunking, hooks on a module it would bypass, a projection that is no longer a plain
``nn.Linear`` (LoRA), active dropout after a projection, autocast, mixed or unsupported dtypes.
Blocks of another structure (ada-norm, GLIGEN, positional embeddings, residual connections or
rescaling inside the attention, subclasses with their own forward) are not patched, with a reason.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..ops import _fallback
from ..ops.linear_residual import linear_residual, linear_residual_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward
from .processors import sdpa_attention_core

__all__ = ["ResidualBlockForward", "patch_residual_adds", "residual_block_unsupported_reason", "unpatch_residual_adds"]


def _attentions(block: BasicTransformerBlock) -> list[tuple[str, nn.Module]]:
    return [(name, getattr(block, name)) for name in ("attn1", "attn2") if getattr(block, name) is not None]


def _projections(block: BasicTransformerBlock) -> list[tuple[str, nn.Module]]:
    """The Linears whose epilogue takes a residual: each attention's ``to_out[0]``, the feed-forward's ``net[2]``."""
    return [(f"{name}.to_out.0", attn.to_out[0]) for name, attn in _attentions(block)] + [("ff.net.2", block.ff.net[2])]


def _dropouts(block: BasicTransformerBlock) -> list[nn.Module]:
    """The dropouts between a projection and its residual add."""
    return [attn.to_out[1] for _, attn in _attentions(block)] + list(block.ff.net[3:])


def residual_block_unsupported_reason(block: nn.Module) -> str | None:
    """Why :class:`ResidualBlockForward` cannot reproduce ``block``'s structure (None: it can)."""
    if type(block) is not BasicTransformerBlock:  # subclasses (FreeNoise's, Tune-A-Video's) have their own forward
        return f"expected diffusers' BasicTransformerBlock, got {type(block).__name__}"
    if block.norm_type != "layer_norm":
        return f"norm_type {block.norm_type!r} (only 'layer_norm' blocks are fused)"
    if block.only_cross_attention or block.pos_embed is not None or hasattr(block, "fuser"):
        return "cross-attention-only, positional-embedding and gated (GLIGEN) blocks are not fused"
    for name, attn in _attentions(block):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross:
            return f"{name} normalises its input itself (spatial, group or cross norm)"
        if attn.residual_connection or attn.rescale_output_factor != 1.0:
            return f"{name} adds its own residual or rescales its output"
    ff = block.ff
    if not isinstance(ff, FeedForward) or len(ff.net) not in (3, 4) \
            or not all(isinstance(m, nn.Dropout) for m in (ff.net[1], *ff.net[3:])):
        return "its feed-forward is not diffusers' FeedForward (activation, dropout, Linear[, dropout])"
    for path, linear in _projections(block):
        if type(linear) is not nn.Linear:
            return f"{path} is a {type(linear).__name__} (e.g. a LoRA layer), not a plain nn.Linear"
    return None


def _call_reason(block: BasicTransformerBlock, hidden_states: torch.Tensor, attention_mask, encoder_attention_mask,
                 cross_attention_kwargs) -> str | None:
    """Why this call runs diffusers' forward (None: the fused forward reproduces it). Asked at each
    call: processors, hooks, LoRA layers and chunking may change after patching."""
    if attention_mask is not None or encoder_attention_mask is not None:
        return "called with an attention mask"
    if cross_attention_kwargs:
        return f"called with cross_attention_kwargs ({', '.join(sorted(cross_attention_kwargs))})"
    if block._chunk_size is not None:
        return "feed-forward chunking is on"
    if hidden_states.dim() != 3:
        return f"hidden_states of {hidden_states.dim()} dims (expected (batch, tokens, C))"
    reason = residual_block_unsupported_reason(block)
    if reason is not None:
        return reason
    for name, attn in _attentions(block):
        if type(attn.processor) is not AttnProcessor2_0:
            return f"{name}'s processor is {type(attn.processor).__name__}, not diffusers' AttnProcessor2_0"
    bypassed = [attn for _, attn in _attentions(block)] + [linear for _, linear in _projections(block)] \
        + [block.ff] + _dropouts(block)
    if any("forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks for m in bypassed):
        return "a hook (a cache, offloading) is on an attention, projection or feed-forward module it bypasses"
    if any(m.training and m.p > 0 for m in _dropouts(block)):
        return "dropout after a projection is active (training mode)"
    device = hidden_states.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return "autocast is on (it picks the projections' precision per call)"
    dtype = hidden_states.dtype
    for path, linear in _projections(block):
        if linear.weight.dtype != dtype:
            return f"activations in {dtype}, {path} weights in {linear.weight.dtype}"
    return linear_residual_unsupported_reason(dtype)


def _attention_into(attn: nn.Module, normed: torch.Tensor, context: torch.Tensor | None,
                    residual: torch.Tensor) -> torch.Tensor:
    """``attn(normed, context) + residual`` with the add in the output projection's epilogue."""
    projection = attn.to_out[0]
    return linear_residual(sdpa_attention_core(attn, normed, context), projection.weight, projection.bias, residual)


class ResidualBlockForward(InstanceForward):
    """A BasicTransformerBlock instance's forward with fused residual adds (see the module docstring)."""

    def __call__(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                 added_cond_kwargs=None) -> torch.Tensor:
        block = self.module
        reason = _call_reason(block, hidden_states, attention_mask, encoder_attention_mask, cross_attention_kwargs)
        if reason is not None:
            _fallback.warn_once("transformer block with fused residual adds", reason, "diffusers' forward")
            return self.unfused(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
        # layer_norm blocks read no timestep, class labels or added conditions (diffusers' forward neither)
        hidden_states = _attention_into(block.attn1, block.norm1(hidden_states), None, hidden_states)
        if block.attn2 is not None:
            hidden_states = _attention_into(block.attn2, block.norm2(hidden_states), encoder_hidden_states,
                                            hidden_states)
        ff = block.ff
        inner = ff.net[1](ff.net[0](block.norm3(hidden_states)))
        return linear_residual(inner, ff.net[2].weight, ff.net[2].bias, hidden_states)


def patch_residual_adds(block: nn.Module) -> nn.Module:
    """Install :class:`ResidualBlockForward` on ``block`` (a diffusers ``BasicTransformerBlock``);
    idempotent; returns it."""
    return install_forward(block, ResidualBlockForward, residual_block_unsupported_reason(block),
                           (BasicTransformerBlock,), argument="block")


def unpatch_residual_adds(block: nn.Module) -> nn.Module:
    return restore_forward(block, ResidualBlockForward)
