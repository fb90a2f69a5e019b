"""Stable Video Diffusion's temporal transformer blocks on vidgen's temporal attention (METHODS.md section 2).

SVD's ``UNetSpatioTemporalConditionModel`` mixes frames in two kinds of layer: temporal ResNet
blocks (a Conv3d over three frames, left to PyTorch) and ``TransformerSpatioTemporalModel``, where
each spatial ``BasicTransformerBlock`` is followed by a ``TemporalBasicTransformerBlock`` whose
self-attention spans the frames. diffusers feeds that block ``(B*N, F, C)`` tokens, permuted from
the ``(B*F, N, C)`` image layout and back inside the block, and broadcasts the time context (each
video's first-frame image embedding) to ``(B*N, T, C)`` for its cross-attention. Only ``attn1``
mixes frames; ``norm_in``/``ff_in``, the norms, the feed-forward and the ``is_res`` residuals act
token by token, and ``attn2``'s queries are independent of each other. So the patched forward
keeps the image layout throughout:

* ``attn1`` reads its projections in place as ``(B, F, N, H, D)`` views
  (:func:`vidgen.integration.temporal.attend_over_frames`);
* ``attn2`` runs on a ``(B, F*N, C)`` view of its queries against the ``(B, T, C)`` context of each
  video: no broadcast copy of the context, and K/V projected once per video, not once per position;
* the frame embedding is computed for ``F`` rows and added along frames (diffusers computes it
  for every video); ``time_mixer`` and the spatial blocks run as diffusers' own modules.

Under frame-parallel sampling (:mod:`vidgen.integration.frame_parallel`) a rank holds a contiguous
run of each video's frames: each temporal block runs on the position-sharded layout (every frame of
this rank's positions, one all-to-all before and one after), and the frame embedding takes the
frames' indices in the whole video. A call the fused forward does not reproduce is refused there
(diffusers' forward would attend over this rank's frames only).

:func:`patch_spatio_temporal` installs :class:`FusedSpatioTemporalForward` as one instance's
forward (parameters and the state dict untouched); :func:`unpatch_spatio_temporal` restores it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._fallback import warn_once
from ..ops.temporal_attention import temporal_attention_unsupported_reason
from .blocks import attention_call_reason
from .frame_parallel import active_shard
from .forwards import InstanceForward, install_forward, restore_forward
from .layout import head_dim_of, videos_in
from .residual_adds import feed_forward_plus_residual, temporal_attention_plus_residual
from .temporal import attend_over_frames

__all__ = ["FusedSpatioTemporalForward", "cross_attentions", "patch_spatio_temporal",
           "spatio_temporal_unsupported_reason", "temporal_block_over_frames", "unpatch_spatio_temporal"]


def _types() -> tuple[type, type]:
    from diffusers.models.attention import TemporalBasicTransformerBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    return TransformerSpatioTemporalModel, TemporalBasicTransformerBlock


def spatio_temporal_unsupported_reason(model: nn.Module) -> str | None:
    """Why :class:`FusedSpatioTemporalForward` cannot reproduce ``model`` (naming the part), or None.

    Served: a ``TransformerSpatioTemporalModel`` whose temporal blocks are diffusers'
    ``TemporalBasicTransformerBlock`` with LayerNorms, a plain self-attention ``attn1`` (no
    cross-attention, group or spatial norm) of a head dim the temporal kernel serves, as many
    temporal as spatial blocks. What a call may change (dtype, processors, chunked feed-forward,
    gradient checkpointing) is checked at each call.
    """
    model_type, block_type = _types()
    name = type(model).__name__
    if not isinstance(model, model_type):
        return f"expected a TransformerSpatioTemporalModel, got {name}"
    if len(model.temporal_transformer_blocks) != len(model.transformer_blocks):
        return f"{name}: {len(model.transformer_blocks)} spatial but {len(model.temporal_transformer_blocks)} temporal blocks"
    for i, block in enumerate(model.temporal_transformer_blocks):
        where = f"{name}.temporal_transformer_blocks[{i}]"
        if type(block) is not block_type:  # a subclass may change the forward
            return f"{where}: expected a TemporalBasicTransformerBlock, got {type(block).__name__}"
        norms = [getattr(block, n) for n in ("norm_in", "norm1", "norm3")] + ([block.norm2] if block.attn2 else [])
        if any(not isinstance(norm, nn.LayerNorm) for norm in norms):
            return f"{where}: expected LayerNorms"
        attn = block.attn1
        if attn.is_cross_attention or attn.spatial_norm is not None or attn.group_norm is not None:
            return f"{where}.attn1: expected plain self-attention (no cross-attention, spatial or group norm)"
        reason = temporal_attention_unsupported_reason(head_dim_of(attn))
        if reason is not None:
            return f"{where}.attn1: {reason}"
    return None


def temporal_block_over_frames(block: nn.Module, hidden_states: torch.Tensor, num_frames: int,
                               context: torch.Tensor | None, residual_adds: bool = False) -> torch.Tensor:
    """``TemporalBasicTransformerBlock.forward`` on the image layout, without its two permuted copies.

    ``hidden_states``: (B*F, N, C), frame fastest (checked by the caller); ``context``: (B, T, C')
    per video, the time context before diffusers broadcasts it over positions. Returns (B*F, N, C).
    ``residual_adds``: ``ff_in``'s, ``attn1``'s and ``ff``'s residual adds in their last projection's
    epilogue where it can take them (:mod:`vidgen.integration.residual_adds`); ``attn2``'s output
    is a broadcast view when its context is one token, so its add is one pass already.
    """
    residual = hidden_states
    normed = block.norm_in(hidden_states)
    if residual_adds and block.is_res:
        hidden_states = feed_forward_plus_residual("ff_in", block.ff_in, normed, residual)
    else:
        hidden_states = block.ff_in(normed)
        if block.is_res:
            hidden_states = hidden_states + residual
    if residual_adds:
        hidden_states = temporal_attention_plus_residual("attn1", block.attn1, block.norm1(hidden_states), num_frames,
                                                         hidden_states)
    else:
        hidden_states = attend_over_frames(block.attn1, block.norm1(hidden_states), num_frames, None, 0) + hidden_states
    if block.attn2 is not None:
        # every query attends to its own video's context: queries of one video in one row
        videos = context.shape[0]
        queries = block.norm2(hidden_states).reshape(videos, -1, hidden_states.shape[-1])
        # (B, F*N, C); a broadcast view when the context is one token (SingleTokenCrossAttnProcessor)
        attended = block.attn2(queries, encoder_hidden_states=context).unflatten(1, (num_frames, -1))
        hidden_states = (attended + hidden_states.unflatten(0, (videos, num_frames))).flatten(0, 1)
    if residual_adds and block.is_res:
        return feed_forward_plus_residual("ff", block.ff, block.norm3(hidden_states), hidden_states)
    ff_output = block.ff(block.norm3(hidden_states))
    return ff_output + hidden_states if block.is_res else ff_output


class FusedSpatioTemporalForward(InstanceForward):
    """``TransformerSpatioTemporalModel.forward`` with the temporal blocks on the image layout.

    Computes what diffusers' forward computes, with the model's own modules: GroupNorm,
    ``proj_in``, the spatial blocks, ``time_mixer`` and ``proj_out`` are called as they are; each
    temporal block runs through :func:`temporal_block_over_frames`. Calls it cannot reproduce run
    the model's original forward, with a warning once where the reason is not the caller's
    choice: no ``encoder_hidden_states`` or ``image_only_indicator`` (diffusers' forward needs
    both), gradient checkpointing in training, chunked feed-forward, an attention processor other
    than diffusers' default ones (or an attention whose forward a hook replaced), a structure
    changed since patching, a dtype the temporal kernel does not take.

    Install with :func:`patch_spatio_temporal`; this object becomes the instance's ``forward``.
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._checked_blocks = tuple(model.temporal_transformer_blocks)
        self._structure: str | None = None  # patch_spatio_temporal checked these blocks
        # the temporal blocks' residual adds in their projections' epilogues (vidgen.patch(..., residual_adds=True))
        self.residual_adds = False

    def _unfusable_reason(self, hidden_states, encoder_hidden_states, image_only_indicator) -> str | None:
        """Why this call runs diffusers' forward ("" for a reason not worth a warning), or None."""
        m = self.module
        if encoder_hidden_states is None or image_only_indicator is None or hidden_states.dim() != 4:
            return ""  # diffusers' forward says what is wrong
        if torch.is_grad_enabled() and m.gradient_checkpointing:
            return ""  # training with checkpointing: diffusers' own recompute schedule
        blocks = tuple(m.temporal_transformer_blocks)
        if len(blocks) != len(self._checked_blocks) or any(a is not b for a, b in zip(blocks, self._checked_blocks)):
            self._checked_blocks, self._structure = blocks, spatio_temporal_unsupported_reason(m)  # swapped since
        if self._structure is not None:
            return self._structure
        for i, block in enumerate(m.temporal_transformer_blocks):
            if block._chunk_size is not None:
                return f"temporal_transformer_blocks[{i}] chunks its feed-forward"
            for name in ("attn1", "attn2"):
                attn = getattr(block, name)
                # attn2 may run SingleTokenCrossAttnProcessor: it is called as the module either way
                reason = None if attn is None else attention_call_reason(attn, hidden_states.dtype,
                                                                          ("SingleTokenCrossAttnProcessor",))
                if reason is not None:
                    return f"temporal_transformer_blocks[{i}].{name}: {reason}"
        return None

    def __call__(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 image_only_indicator: torch.Tensor | None = None, return_dict: bool = True):
        shard = active_shard()
        reason = self._unfusable_reason(hidden_states, encoder_hidden_states, image_only_indicator)
        if reason is not None:
            if shard is not None:  # diffusers' forward would attend over this rank's frames only
                raise ValueError(f"frame_parallel: this call of {type(self.module).__name__} needs diffusers' own "
                                 f"forward ({reason or 'a call it does not reproduce'}), which sees only this "
                                 "rank's frames; run it without frame_parallel")
            if reason:
                warn_once(type(self.module).__name__, reason, "diffusers' forward")
            return self.unfused(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=image_only_indicator, return_dict=return_dict)
        m = self.module
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        videos = videos_in(batch_frames, num_frames, type(m).__name__)
        # the time context: each video's first-frame context (diffusers broadcasts it over positions)
        context = encoder_hidden_states.unflatten(0, (videos, num_frames))[:, 0]

        residual = hidden_states
        hidden_states = m.norm(hidden_states)
        channels = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        hidden_states = m.proj_in(hidden_states)

        # the frame embedding depends on the frame index only: F rows, added along frames (on a
        # frame-parallel shard, the indices of this rank's frames in the whole video)
        first = 0 if shard is None else shard.first_frame
        frame_index = torch.arange(first, first + num_frames, device=hidden_states.device)
        emb = m.time_pos_embed(m.time_proj(frame_index).to(dtype=hidden_states.dtype))[:, None, :]  # (F, 1, C)

        for block, temporal_block in zip(m.transformer_blocks, m.temporal_transformer_blocks):
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
            mix = (hidden_states.unflatten(0, (videos, num_frames)) + emb).flatten(0, 1)
            mix = self._temporal_block(temporal_block, mix, num_frames, context, shard, self.residual_adds)
            hidden_states = m.time_mixer(x_spatial=hidden_states, x_temporal=mix,
                                         image_only_indicator=image_only_indicator)

        hidden_states = m.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2).contiguous()
        output = hidden_states + residual
        if not return_dict:
            return (output,)
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

        return TransformerTemporalModelOutput(sample=output)

    @staticmethod
    def _temporal_block(block: nn.Module, tokens: torch.Tensor, num_frames: int, context: torch.Tensor,
                        shard, residual_adds: bool) -> torch.Tensor:
        """:func:`temporal_block_over_frames` of ``(B*F, N, C)`` tokens; on a frame-parallel shard, of every
        frame of this rank's positions (all-to-all there and back: only ``attn1`` mixes frames, the rest
        of the block is per token, and ``attn2``'s context is per video)."""
        if shard is None:
            return temporal_block_over_frames(block, tokens, num_frames, context, residual_adds)
        positions = tokens.shape[1]
        columns = shard.to_positions(tokens)  # (B*F, N_r, C)
        if columns.shape[1]:  # a rank may hold no position of a tiny map
            columns = temporal_block_over_frames(block, columns, shard.num_frames, context, residual_adds)
        return shard.to_frames(columns, positions)


def cross_attentions(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path inside ``model``, module) of a ``TransformerSpatioTemporalModel``'s cross-attentions:
    the spatial blocks' against the image embedding and the temporal blocks' against the time
    context, one token each in SVD (which :class:`~vidgen.integration.processors.SingleTokenCrossAttnProcessor`
    serves; it checks each call)."""
    found = []
    for name in ("transformer_blocks", "temporal_transformer_blocks"):
        for i, block in enumerate(getattr(model, name)):
            attn = getattr(block, "attn2", None)
            if attn is not None and attn.is_cross_attention:
                found.append((f"{name}.{i}.attn2", attn))
    return found


def patch_spatio_temporal(model: nn.Module) -> nn.Module:
    """Give this ``TransformerSpatioTemporalModel`` instance the copy-free forward (idempotent).

    Only the instance changes; parameters, buffers and the state dict are untouched. Raises
    ``TypeError`` for another kind of module and ``ValueError`` naming the part for one the fused
    forward does not reproduce (:func:`spatio_temporal_unsupported_reason`).
    """
    return install_forward(model, FusedSpatioTemporalForward, spatio_temporal_unsupported_reason(model),
                           (_types()[0],), "model")


def unpatch_spatio_temporal(model: nn.Module) -> nn.Module:
    """Restore the forward the model had before :func:`patch_spatio_temporal` (no-op if unpatched)."""
    return restore_forward(model, FusedSpatioTemporalForward)
