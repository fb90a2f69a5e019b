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

The blocks run as :mod:`vidgen.integration.blocks` computes them on the image layout (FreeNoise's
windowed blocks and split inference's wrappers as :mod:`vidgen.integration.free_noise` does), the
GroupNorm over frames is :func:`vidgen.integration.frame_norm.group_norm_over_frames`. Under
frame-parallel sampling (:mod:`vidgen.integration.frame_parallel`) the blocks run between an
all-to-all to whole columns of frames and one back, so FreeNoise's windows see every frame.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._fallback import warn_once
from .blocks import attention_call_reason, block_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward
from .frame_norm import group_norm_over_frames
from .frame_parallel import active_shard
from .free_noise import diffusers_fails_on, is_free_noise_block, run_block, split_size_of, split_unsupported_reason, unwrap_split
from .layout import videos_in

__all__ = ["FusedMotionForward", "motion_module_unsupported_reason", "patch_motion_module", "unpatch_motion_module"]


# ----------------------------------------------------------------------------------------------
# AnimateDiff motion modules
# ----------------------------------------------------------------------------------------------
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
    structure must be the one the fused forward computes (its blocks plain or FreeNoise
    ``BasicTransformerBlock``s, split for inference or not: :func:`~vidgen.integration.blocks.block_unsupported_reason`),
    and every attention's head dim one the temporal kernel serves. Calls are checked again at run
    time for what a call may change (dtype, processors, chunked feed-forward, blocks swapped in
    since; see :meth:`FusedMotionForward.__call__`)."""
    name = type(module).__name__
    if not isinstance(module, _motion_module_types()):
        return f"expected an AnimateDiffTransformer3D or TransformerTemporalModel, got {name}"
    if not isinstance(module.norm, nn.GroupNorm) or not module.norm.affine:
        return f"{name}.norm: expected an affine nn.GroupNorm"
    for part in ("proj_in", "proj_out"):
        reason = split_unsupported_reason(getattr(module, part), f"{name}.{part}")
        if reason is not None:
            return reason
    for i, block in enumerate(module.transformer_blocks):
        where = f"{name}.transformer_blocks[{i}]"
        reason = split_unsupported_reason(block, where) or block_unsupported_reason(unwrap_split(block), where)
        if reason is not None:
            return reason
        if unwrap_split(block).norm_type != "layer_norm":
            return f"{where}: expected norm_type='layer_norm' in a motion module"
    return None


def _pag_parts(processor) -> int:
    """How many equal chunks of the batch a PAG identity processor splits (the last is the
    perturbed one), or 0 for any other processor."""
    return _PAG_PROCESSORS.get(type(processor).__name__, 0)


def _identity_videos(attn: nn.Module, videos: int) -> int:
    parts = _pag_parts(attn.processor)
    return videos // parts if parts else 0


def _plain_linear(proj: nn.Module) -> bool:
    return type(proj) is nn.Linear and "forward" not in proj.__dict__


def _project_in(proj: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """``proj_in`` of the channels-first (B*F, C, N) map, as (B*F, N, C') tokens.

    A plain ``nn.Linear`` is one batched matmul that reads the map as its transposed operand in
    place. Anything else (a PEFT LoRA wrapper loaded after patching, a fused-LoRA layer, a layer
    whose forward a diffusers hook replaced) is called as the module on the transposed view, so
    whatever it adds is computed (its matmul makes the copy the plain path avoids). Split
    inference's wrapper is looked through: a matmul's output is whole whichever way it is split.
    """
    proj = unwrap_split(proj)
    if not _plain_linear(proj):
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
    proj = unwrap_split(proj)
    if not _plain_linear(proj):
        return residual + proj(tokens).transpose(1, 2)
    out = torch.baddbmm(residual, proj.weight.expand(tokens.shape[0], -1, -1), tokens.transpose(1, 2))
    return out if proj.bias is None else out + proj.bias.view(-1, 1)


class FusedMotionForward(InstanceForward):
    """The forward of an AnimateDiff motion module without the (B*h*w, F, C) permuted copies.

    Computes exactly what ``AnimateDiffTransformer3D.forward`` / ``TransformerTemporalModel.forward``
    compute, with the module's own weights, in one layout decision: the activation stays in the
    image layout throughout. GroupNorm statistics are pooled over frames in place; ``proj_in``
    is a batched matmul that reads the channels-first map as its transposed operand and writes
    (B*F, N, C) tokens; the transformer blocks run on (B, F, N, C) views of those tokens
    (:func:`~vidgen.integration.free_noise.run_block`: the attention over frames read in place, the
    sinusoidal table added to its input along frames; FreeNoise's blocks on frame-window views;
    split inference's blocks on bands of positions); ``proj_out`` is the matmul the other way round,
    written channels-first on top of the residual. The blocks are read at each call, so FreeNoise
    and split inference enabled after patching run fused too. LoRA layers loaded after patching (PEFT wrappers of ``proj_in``/``proj_out``, the
    attention projections or the feed-forward) are honoured: every wrapped layer is called as
    the module it is. Calls the fused path cannot reproduce (an ``encoder_hidden_states``,
    ``cross_attention_kwargs``, a custom attention processor other than PAG's identity
    processors, which the blocks compute, chunked feed-forward, an attention whose forward a hook
    replaced, a FreeNoise call diffusers' block fails on) run the module's original forward, and
    so do calls the temporal kernel does not serve (a dtype or head dim outside its range) and
    blocks swapped in since that the fused forward does not reproduce, with a warning once.

    Install with :func:`patch_motion_module` (which checks the module); this object becomes the
    instance's ``forward``.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.returns_output_class = isinstance(module, _motion_module_types()[1])  # TransformerTemporalModel
        self._checked_parts: tuple[nn.Module, ...] = (module.proj_in, module.proj_out, *module.transformer_blocks)
        self._structure: str | None = None  # patch_motion_module checked these parts
        # the blocks' residual adds in their projections' epilogues (vidgen.patch(..., residual_adds=True))
        self.residual_adds = False

    def _structure_reason(self) -> str | None:
        """:func:`motion_module_unsupported_reason` of the module as it stands now, asked again only
        when its blocks or projections were swapped since (FreeNoise and split inference swap them
        in place, before or after patching)."""
        m = self.module
        parts = (m.proj_in, m.proj_out, *m.transformer_blocks)
        if len(parts) != len(self._checked_parts) or any(a is not b for a, b in zip(parts, self._checked_parts)):
            self._structure = motion_module_unsupported_reason(m)
            self._checked_parts = parts
        return self._structure

    def _fusable_call(self, hidden_states, encoder_hidden_states, cross_attention_kwargs, num_frames) -> bool:
        if encoder_hidden_states is not None or cross_attention_kwargs or hidden_states.dim() != 4:
            return False
        owner = type(self.module).__name__
        reason = self._structure_reason()
        if reason is not None:
            warn_once(owner, reason, "diffusers' forward")
            return False
        videos = hidden_states.shape[0] // num_frames if num_frames else 0
        shard = active_shard()
        video_frames = num_frames if shard is None else shard.num_frames  # FreeNoise windows span the whole video
        split = any(split_size_of(block) is not None for block in self.module.transformer_blocks)
        for block in map(unwrap_split, self.module.transformer_blocks):
            if block._chunk_size is not None:
                return False
            if is_free_noise_block(block) and diffusers_fails_on(block, video_frames):
                return False  # let diffusers' block say what is wrong
            for attn in (block.attn1, block.attn2):
                if attn is None:
                    continue
                parts = _pag_parts(attn.processor)
                if parts and (videos % parts or split):
                    # diffusers' chunks would then cut through a video (under split inference they
                    # split groups of positions): only its own forward does that
                    warn_once(owner, f"{type(attn.processor).__name__} splits a batch of {videos} videos into {parts} "
                              + ("parts inside split inference" if split else "unequal parts"), "diffusers' forward")
                    return False
                reason = attention_call_reason(attn, hidden_states.dtype, tuple(_PAG_PROCESSORS))
                if reason is not None:
                    warn_once(owner, reason, "diffusers' forward")
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
        tokens = _project_in(m.proj_in, normed)  # (B*F, N, C)
        videos = batch_frames // num_frames
        block_frames, positions = num_frames, tokens.shape[1]
        if shard is not None:  # frame-parallel: the blocks see every frame of this rank's positions
            tokens, block_frames = shard.to_positions(tokens), shard.num_frames
        if tokens.shape[1]:  # a rank may hold no position of a tiny map
            for block in m.transformer_blocks:
                inner = unwrap_split(block)
                identity = (_identity_videos(inner.attn1, videos),
                            _identity_videos(inner.attn2, videos) if inner.attn2 is not None else 0)
                tokens = run_block(block, tokens.unflatten(0, (videos, block_frames)), identity_videos=identity,
                                   residual_adds=self.residual_adds).flatten(0, 1)
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
    return install_forward(module, FusedMotionForward, motion_module_unsupported_reason(module), _motion_module_types())


def unpatch_motion_module(module: nn.Module) -> nn.Module:
    """Restore the forward the module had before :func:`patch_motion_module` (no-op if unpatched)."""
    return restore_forward(module, FusedMotionForward)
