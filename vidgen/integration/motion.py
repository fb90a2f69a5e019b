"""AnimateDiff motion modules on vidgen's copy-free temporal attention (METHODS.md section 2).

Video UNets keep activations in the image layout: frames folded into the batch, ``(B*F, N, C)``
tokens or ``(B*F, C, h, w)`` maps. Temporal layers in diffusers and Tune-A-Video permute the
whole activation to ``(B*N, F, C)`` and back around each attention (two full copies, plus the
copies SDPA's head split makes). Here the attention reads the projections where they are:
``vidgen.ops.temporal_attention`` takes (B, F, N, H, D) with any strides, so every tensor stays
in the image layout and only the matmuls and norms touch memory.

* :func:`motion_module_unsupported_reason`: whether the fused forward reproduces a module (its
  structure and head dims), and if not why; the one check, asked by :func:`patch_motion_module`.
* :func:`patch_motion_module`: instance-level patch of ``AnimateDiffTransformer3D`` /
  ``TransformerTemporalModel`` (AnimateDiff motion modules) with :class:`FusedMotionForward`;
  :func:`unpatch_motion_module` restores the module's own forward.

The attention itself is :func:`vidgen.integration.temporal.attend_over_frames`, the GroupNorm over
frames :func:`vidgen.integration.frame_norm.group_norm_over_frames`. Under frame-parallel sampling
(:mod:`vidgen.integration.frame_parallel`) the blocks run between an all-to-all to whole columns of
frames and one back.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._fallback import warn_once
from ..ops.temporal_attention import temporal_attention_unsupported_reason
from .frame_norm import group_norm_over_frames
from .frame_parallel import active_shard
from .layout import head_dim_of, videos_in
from .temporal import attend_over_frames

__all__ = ["FusedMotionForward", "motion_module_unsupported_reason", "patch_motion_module", "unpatch_motion_module"]


# ----------------------------------------------------------------------------------------------
# AnimateDiff motion modules
# ----------------------------------------------------------------------------------------------
_DEFAULT_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # the ones whose math we reproduce
# PAG's identity processors (diffusers' perturbed-attention guidance): the batch is split in equal
# chunks, [cond, perturbed] or with CFG [uncond, cond, perturbed]; the last chunk's attention is
# the identity and the others' is the default processor's.
_PAG_PROCESSORS = {"PAGIdentitySelfAttnProcessor2_0": 2, "PAGCFGIdentitySelfAttnProcessor2_0": 3}


def _motion_module_types() -> tuple[type, ...]:
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return AnimateDiffTransformer3D, TransformerTemporalModel


def motion_module_unsupported_reason(module: nn.Module) -> str | None:
    """Why the fused forward cannot reproduce this motion module (naming the part), or None: its
    structure must be the one the fused forward computes, and every attention's head dim one the
    temporal kernel serves. Calls are checked again at run time for what a call may change
    (dtype, processors, chunked feed-forward; see :meth:`FusedMotionForward.__call__`)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    name = type(module).__name__
    if not isinstance(module, _motion_module_types()):
        return f"expected an AnimateDiffTransformer3D or TransformerTemporalModel, got {name}"
    if not isinstance(module.norm, nn.GroupNorm) or not module.norm.affine:
        return f"{name}.norm: expected an affine nn.GroupNorm"
    for i, block in enumerate(module.transformer_blocks):
        where = f"{name}.transformer_blocks[{i}]"
        if not isinstance(block, BasicTransformerBlock) or block.norm_type != "layer_norm":
            return f"{where}: expected a BasicTransformerBlock with norm_type='layer_norm'"
        if block.only_cross_attention or hasattr(block, "fuser"):
            return f"{where}: cross-attention-only and gated blocks are not temporal self-attention"
        if block.pos_embed is not None and not isinstance(block.pos_embed, SinusoidalPositionalEmbedding):
            return (f"{where}.pos_embed: expected None or SinusoidalPositionalEmbedding, "
                    f"got {type(block.pos_embed).__name__}")
        for attn_name in ("attn1", "attn2"):
            attn = getattr(block, attn_name)
            if attn is None:
                continue
            if attn.is_cross_attention:
                return f"{where}.{attn_name}: expected self-attention, got cross-attention"
            reason = temporal_attention_unsupported_reason(head_dim_of(attn))
            if reason is not None:
                return reason
    return None


def _pag_parts(processor) -> int:
    """How many equal chunks of the batch a PAG identity processor splits (the last is the
    perturbed one), or 0 for any other processor."""
    return _PAG_PROCESSORS.get(type(processor).__name__, 0)


def _identity_videos(attn: nn.Module, videos: int) -> int:
    parts = _pag_parts(attn.processor)
    return videos // parts if parts else 0


def _block_forward(block: nn.Module, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """diffusers' ``BasicTransformerBlock`` (layer norms, two self-attentions over frames, ff) on
    image-layout tokens (B*F, N, C)."""
    table = block.pos_embed.pe[0] if block.pos_embed is not None else None  # (max_seq_length, C)
    videos = tokens.shape[0] // num_frames
    tokens = attend_over_frames(block.attn1, block.norm1(tokens), num_frames, table,
                                _identity_videos(block.attn1, videos)) + tokens
    if block.attn2 is not None:
        tokens = attend_over_frames(block.attn2, block.norm2(tokens), num_frames, table,
                                    _identity_videos(block.attn2, videos)) + tokens
    return block.ff(block.norm3(tokens)) + tokens


def _project_in(proj: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """``proj_in`` of the channels-first (B*F, C, N) map, as (B*F, N, C') tokens.

    A plain ``nn.Linear`` is one batched matmul that reads the map as its transposed operand in
    place. Anything else (a PEFT LoRA wrapper loaded after patching, a fused-LoRA layer) is
    called as the module on the transposed view, so whatever it adds is computed (its matmul
    makes the copy the plain path avoids).
    """
    if type(proj) is not nn.Linear:
        return proj(normed.transpose(1, 2))
    weight = proj.weight.t().expand(normed.shape[0], -1, -1)
    if proj.bias is None:
        return torch.bmm(normed.transpose(1, 2), weight)
    return torch.baddbmm(proj.bias, normed.transpose(1, 2), weight)


def _project_out_residual(proj: nn.Module, tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + proj_out(tokens)`` written channels-first: (B*F, C, N) from (B*F, N, C') tokens.

    A plain ``nn.Linear`` is the matmul the other way round (W tokens^T) accumulated onto the
    residual; any other module is called as itself (see :func:`_project_in`).
    """
    if type(proj) is not nn.Linear:
        return residual + proj(tokens).transpose(1, 2)
    out = torch.baddbmm(residual, proj.weight.expand(tokens.shape[0], -1, -1), tokens.transpose(1, 2))
    return out if proj.bias is None else out + proj.bias.view(-1, 1)


class FusedMotionForward:
    """The forward of an AnimateDiff motion module without the (B*h*w, F, C) permuted copies.

    Computes exactly what ``AnimateDiffTransformer3D.forward`` / ``TransformerTemporalModel.forward``
    compute, with the module's own weights, in one layout decision: the activation stays in the
    image layout throughout. GroupNorm statistics are pooled over frames in place; ``proj_in``
    is a batched matmul that reads the channels-first map as its transposed operand and writes
    (B*F, N, C) tokens; the transformer blocks run on those tokens with
    :func:`~vidgen.integration.temporal.attend_over_frames` (the sinusoidal table added to the attention input
    along frames); ``proj_out`` is the matmul the other way round, written channels-first on top of the
    residual. LoRA layers loaded after patching (PEFT wrappers of ``proj_in``/``proj_out``, the
    attention projections or the feed-forward) are honoured: every wrapped layer is called as
    the module it is. Calls the fused path cannot reproduce (an ``encoder_hidden_states``,
    ``cross_attention_kwargs``, a custom attention processor other than PAG's identity
    processors, which the blocks compute, chunked feed-forward) run the
    module's original forward, and so do calls the temporal kernel does not serve (a dtype or
    head dim outside its range), with a warning once.

    Install with :func:`patch_motion_module` (which checks the module); this object becomes the
    instance's ``forward``.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.original_forward = module.__dict__.get("forward")  # an instance-level forward, if any
        self.returns_output_class = isinstance(module, _motion_module_types()[1])  # TransformerTemporalModel

    def unfused(self, *args, **kwargs):
        if self.original_forward is not None:
            return self.original_forward(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def _fusable_call(self, hidden_states, encoder_hidden_states, cross_attention_kwargs, num_frames) -> bool:
        if encoder_hidden_states is not None or cross_attention_kwargs or hidden_states.dim() != 4:
            return False
        videos = hidden_states.shape[0] // num_frames if num_frames else 0
        for block in self.module.transformer_blocks:
            if block._chunk_size is not None:
                return False
            for attn in (block.attn1, block.attn2):
                if attn is None:
                    continue
                name = type(attn.processor).__name__
                parts = _pag_parts(attn.processor)
                if parts and videos % parts:
                    # diffusers' chunks would then cut through a video: only its own forward does that
                    warn_once(type(self.module).__name__, f"{name} splits a batch of {videos} videos into "
                              f"{parts} unequal parts", "diffusers' forward")
                    return False
                if not parts and name not in _DEFAULT_PROCESSORS:
                    # e.g. xformers, fused QKV projections, a user's processor: their math is theirs
                    warn_once(type(self.module).__name__, f"its attention processor is {name}, "
                              "which the fused forward does not reproduce", "diffusers' forward")
                    return False
                reason = temporal_attention_unsupported_reason(head_dim_of(attn), hidden_states.dtype)
                if reason is not None:
                    warn_once(f"{type(self.module).__name__}", reason, "diffusers' forward")
                    return False
        return True

    def __call__(self, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None,
                 num_frames: int = 1, cross_attention_kwargs=None, return_dict: bool = True):
        shard = active_shard()
        if not self._fusable_call(hidden_states, encoder_hidden_states, cross_attention_kwargs, num_frames):
            if shard is not None:  # diffusers' forward would attend over this rank's frames only
                raise ValueError(f"frame_parallel: this call of {type(self.module).__name__} needs diffusers' own "
                                 "forward (see the warning above), which sees only this rank's frames; run it "
                                 "without frame_parallel")
            kwargs = dict(encoder_hidden_states=encoder_hidden_states, timestep=timestep, class_labels=class_labels,
                          num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs)
            if self.returns_output_class:
                kwargs["return_dict"] = return_dict
            return self.unfused(hidden_states, **kwargs)

        m = self.module
        batch_frames, channels, height, width = hidden_states.shape
        videos_in(batch_frames, num_frames, type(m).__name__)  # the one check of the frame count: the blocks trust it
        normed = group_norm_over_frames(hidden_states, m.norm, num_frames).flatten(2)  # (B*F, C, h*w)
        tokens = _project_in(m.proj_in, normed)
        block_frames, positions = num_frames, tokens.shape[1]
        if shard is not None:  # frame-parallel: the blocks see every frame of this rank's positions
            tokens, block_frames = shard.to_positions(tokens), shard.num_frames
        if tokens.shape[1]:  # a rank may hold no position of a tiny map
            for block in m.transformer_blocks:
                tokens = _block_forward(block, tokens, block_frames)
        if shard is not None:
            tokens = shard.to_frames(tokens, positions)
        out = _project_out_residual(m.proj_out, tokens, hidden_states.flatten(2))
        out = out.reshape(batch_frames, channels, height, width)  # a view on the plain-Linear path
        if not self.returns_output_class:
            return out
        if not return_dict:
            return (out,)
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

        return TransformerTemporalModelOutput(sample=out)


def patch_motion_module(module: nn.Module) -> nn.Module:
    """Give this motion-module instance the copy-free forward (idempotent); returns the module.

    Only the instance changes (its class and every other instance keep diffusers' forward);
    parameters, buffers and the state dict are untouched. Raises ``TypeError`` for a module that
    is no motion module and ``ValueError`` naming the part for one whose structure or head dims
    the fused forward does not reproduce (:func:`motion_module_unsupported_reason`).
    """
    if isinstance(module.__dict__.get("forward"), FusedMotionForward):
        return module
    reason = motion_module_unsupported_reason(module)
    if reason is not None:
        if not isinstance(module, _motion_module_types()):
            raise TypeError(f"module: {reason}")
        raise ValueError(reason)  # names the part
    module.forward = FusedMotionForward(module)
    return module


def unpatch_motion_module(module: nn.Module) -> nn.Module:
    """Restore the forward the module had before :func:`patch_motion_module` (no-op if unpatched)."""
    fused = module.__dict__.get("forward")
    if isinstance(fused, FusedMotionForward):
        del module.forward
        if fused.original_forward is not None:
            module.forward = fused.original_forward
    return module
