"""Latte (``LatteTransformer3DModel``) with its temporal blocks on vidgen's temporal attention, copy-free.

Latte is a factorised spatio-temporal DiT: each layer is a spatial ``BasicTransformerBlock`` over
the patches of every frame, ``(B*F, N, C)`` tokens with the text as cross-attention, then a
temporal one over the frames of every patch. diffusers' forward permutes the whole activation to
``(B*N, F, C)`` before each temporal block and back after it: two full copies per layer. The
forward here keeps the image layout throughout: the temporal blocks run on ``(B, F, N, C)``
views of it (:func:`vidgen.integration.blocks.block_over_frames`, with ``ada_norm_single``'s
per-video modulation formed once instead of per patch), the first layer's temporal position table
is added along frames, and everything else (patch embedding, timestep and caption embeddings,
spatial blocks, output modulation, unpatchify) runs as diffusers runs it, on the same tensors.

Under frame-parallel sampling (:mod:`vidgen.integration.frame_parallel`) a call holds this rank's
frames: the spatial blocks run on them as they are, each temporal block between an all-to-all to
whole columns of frames (this rank's share of the patches) and one back, and the temporal position
table is added on the whole columns, so each frame gets its global index's row.

* :func:`latte_unsupported_reason`: whether the fused forward reproduces a model, and if not why.
* :func:`patch_latte` installs :class:`FusedLatteForward` as the instance's forward;
  :func:`unpatch_latte` restores the model's own.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._fallback import warn_once
from .blocks import Modulation, attention_call_reason, block_over_frames, block_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward
from .frame_parallel import active_shard

__all__ = ["FusedLatteForward", "latte_unsupported_reason", "patch_latte", "unpatch_latte"]


def _latte_type() -> type:
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel


def latte_unsupported_reason(model: nn.Module) -> str | None:
    """Why :class:`FusedLatteForward` cannot reproduce ``model`` (naming the part), or None: every
    temporal block must be one :func:`~vidgen.integration.blocks.block_unsupported_reason` serves
    (``ada_norm_single`` as Latte builds them, or ``layer_norm``), with head dims the temporal
    kernel serves, and no diffusers hook (cache, offloading) may have replaced the model's forward."""
    name = type(model).__name__
    if not isinstance(model, _latte_type()):
        return f"expected a LatteTransformer3DModel, got {name}"
    if "forward" in model.__dict__ or getattr(model, "is_cache_enabled", False):
        return f"{name}: a diffusers hook (a cache, offloading) wraps its forward"
    for i, block in enumerate(model.temporal_transformer_blocks):
        reason = block_unsupported_reason(block, f"{name}.temporal_transformer_blocks[{i}]")
        if reason is not None:
            return reason
    return None


class FusedLatteForward(InstanceForward):
    """``LatteTransformer3DModel.forward`` without the (b f) n c <-> (b n) f c copies around its
    temporal blocks (see the module docstring); same signature, same outputs.

    A call runs the model's own forward instead (with a warning once where that costs speed)
    when the fused one could not reproduce it: temporal attention switched off
    (``enable_temporal_attentions=False``: nothing of vidgen's would run), gradient checkpointing
    while recording gradients, an attention processor other than the default on a temporal block
    or a hook replacing its forward, chunked feed-forward, a dtype the temporal kernel does not
    take, or a frame count the temporal position table does not broadcast to (diffusers' forward
    then raises its own error). Under frame-parallel sampling such a call is refused instead
    (diffusers' forward would run the temporal blocks on this rank's frames alone).

    Install with :func:`patch_latte`; this object becomes the instance's ``forward``.
    """

    def _fusable_call(self, hidden_states, enable_temporal_attentions: bool, video_frames: int) -> bool:
        m = self.module
        owner = type(m).__name__
        if not enable_temporal_attentions or not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
            return False
        frames, table_frames = video_frames, m.temp_pos_embed.shape[1]
        if frames > 1 and table_frames not in (1, frames):
            return False  # diffusers' forward fails on it: let it say so
        if torch.is_grad_enabled() and m.gradient_checkpointing:
            warn_once(owner, "gradient checkpointing is on", "diffusers' forward")
            return False
        for block in m.temporal_transformer_blocks:
            if block._chunk_size is not None:
                return False
            reason = block_unsupported_reason(block, f"{owner} temporal block")  # blocks may be swapped after patching
            if reason is not None:
                warn_once(owner, reason, "diffusers' forward")
                return False
            reason = ("a hook (a cache, offloading) replaced a temporal block's forward" if "forward" in block.__dict__
                      else attention_call_reason(block.attn1, hidden_states.dtype))
            if reason is not None:
                warn_once(owner, reason, "diffusers' forward")
                return False
        return True

    def __call__(self, hidden_states: torch.Tensor, timestep: torch.LongTensor | None = None,
                 encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                 enable_temporal_attentions: bool = True, return_dict: bool = True):
        shard = active_shard()
        video_frames = hidden_states.shape[2] if shard is None else shard.num_frames  # the whole video's
        if not self._fusable_call(hidden_states, enable_temporal_attentions, video_frames):
            if shard is not None:  # diffusers' forward would run the temporal blocks on this rank's frames only
                raise ValueError(f"frame_parallel: this call of {type(self.module).__name__} needs diffusers' own "
                                 "forward (temporal attention switched off, a frame count its temporal position "
                                 "table does not take, or see the warning above), which sees only this rank's "
                                 "frames; run it without frame_parallel")
            return self.unfused(hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                                encoder_attention_mask=encoder_attention_mask,
                                enable_temporal_attentions=enable_temporal_attentions, return_dict=return_dict)
        m = self.module
        patch = m.config.patch_size
        videos, channels, frames, height, width = hidden_states.shape
        # the latents' frames folded into the batch, as the patch embedding (a 2-D convolution) takes them
        hidden_states = hidden_states.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width)
        height, width = height // patch, width // patch
        tokens = m.pos_embed(hidden_states)  # (B*F, N, C), the spatial position table added
        timestep, embedded_timestep = m.adaln_single(timestep, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                                     batch_size=videos, hidden_dtype=tokens.dtype)
        text = m.caption_projection(encoder_hidden_states)
        text_per_frame = text.repeat_interleave(frames, dim=0, output_size=text.shape[0] * frames)
        timestep_per_frame = timestep.repeat_interleave(frames, dim=0, output_size=timestep.shape[0] * frames)
        for i, (spatial, temporal) in enumerate(zip(m.transformer_blocks, m.temporal_transformer_blocks)):
            tokens = spatial(tokens, None, text_per_frame, encoder_attention_mask, timestep_per_frame, None, None)
            positions = tokens.shape[1]
            if shard is not None:  # frame-parallel: the temporal block sees every frame of this rank's patches
                tokens = shard.to_positions(tokens)  # (B*F, N_r, C)
            video = tokens.unflatten(0, (videos, video_frames))  # (B, F, N or N_r, C) view
            if i == 0 and video_frames > 1:
                video = video + m.temp_pos_embed.to(video.dtype)[0, :, None]  # (F or 1, 1, C): along frames
            if video.shape[2]:  # a rank may hold no patch of a tiny map
                modulation = Modulation.of(temporal, timestep) if temporal.norm_type == "ada_norm_single" else None
                video = block_over_frames(temporal, video, modulation=modulation)
            tokens = video.flatten(0, 1)
            if shard is not None:
                tokens = shard.to_frames(tokens, positions)

        embedded = embedded_timestep.repeat_interleave(frames, dim=0, output_size=embedded_timestep.shape[0] * frames)
        shift, scale = (m.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
        tokens = m.norm_out(tokens) * (1 + scale) + shift
        tokens = m.proj_out(tokens)  # (B*F, N, p*p*C_out)
        out_channels = m.out_channels
        patches = tokens.reshape(-1, height, width, patch, patch, out_channels)
        frames_out = torch.einsum("nhwpqc->nchpwq", patches).reshape(-1, out_channels, height * patch, width * patch)
        output = frames_out.reshape(videos, frames, out_channels, height * patch, width * patch).permute(0, 2, 1, 3, 4)
        if not return_dict:
            return (output,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output)


def patch_latte(model: nn.Module) -> nn.Module:
    """Give this ``LatteTransformer3DModel`` instance the copy-free forward (idempotent); returns it.

    Only the instance changes; parameters, buffers and the state dict are untouched. Raises
    ``TypeError`` for another kind of model and ``ValueError`` naming the part for one the fused
    forward does not reproduce (:func:`latte_unsupported_reason`).
    """
    return install_forward(model, FusedLatteForward, latte_unsupported_reason(model), (_latte_type(),), "model")


def unpatch_latte(model: nn.Module) -> nn.Module:
    """Restore the forward the model had before :func:`patch_latte` (no-op if unpatched)."""
    return restore_forward(model, FusedLatteForward)
