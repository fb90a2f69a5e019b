"""The Tune-A-Video video UNet, built from a diffusers ``UNet2DConditionModel`` (METHODS.md section 6).

Design: :class:`VideoUNet` *is* a ``UNet2DConditionModel`` (a subclass), so diffusers builds every
layer and the parameter names are exactly the 2-D UNet's and the reference implementation's
(``down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight``). Inflation changes
three things in place, right after construction:

* every ``BasicTransformerBlock`` becomes a :class:`VideoTransformerBlock` (same modules, plus
  ``norm_temp``/``attn_temp``; its forward is Tune-A-Video's: frame attention, text
  cross-attention per frame, feed-forward, temporal attention);
* every ResNet GroupNorm and ``conv_norm_out`` becomes a :class:`FramePooledGroupNorm`
  (statistics over the frames of a video as well, like the reference's 5-D GroupNorm:
  :func:`~vidgen.integration.frame_norm.group_norm_over_frames`), and every ResNet block a
  :class:`VideoResnetBlock`, whose norms apply the SiLU after them in the same kernel;
* the ``attn1``/``attn_temp`` processors are vidgen's (or, unpatched, the reference's), and so
  are the pooled GroupNorms (vidgen's fused kernel, or the reference's 5-D GroupNorm).

Convolutions, up/down-sampling, the transformer's own GroupNorm and the time embedding need no
change: with frames folded into the batch ("(b f)", frame fastest) they are exactly the
reference's per-frame (``InflatedConv3d``, scale ``[1, 2, 2]``) layers.

The frame count reaches the inflated layers through a small object shared by the model and
those layers (:class:`FrameCount`), set by :meth:`VideoUNet.forward`. It keeps the value of the
last forward, so gradient checkpointing's recomputation in backward sees the same count.
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock, _chunked_feed_forward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput

from ..ops.frame_attention import FRAME_MODES, frame_attention_unsupported_reason
from ..ops.temporal_attention import temporal_attention_unsupported_reason
from .frame_norm import group_norm_over_frames, group_norm_over_frames_reference, pools_across_processes
from .layout import head_dim_of
from .processors import frame_processor, temporal_processor

__all__ = ["INFLATION_MODES", "TEMPORAL_KEY", "FrameCount", "FramePooledGroupNorm", "KeyReport", "VideoResnetBlock",
           "VideoTransformerBlock", "VideoUNet", "inflate"]

TEMPORAL_KEY = "_temp."  # every parameter name of the new temporal layers contains it
# The frame modes a video UNet is inflated with: the ones its methods train (Tune-A-Video's
# sparse-causal, LAMP's first-frame). Full attention over every frame is a frame mode of the
# processors and the op, but no inflated checkpoint uses it.
INFLATION_MODES = tuple(mode for mode in FRAME_MODES if mode in ("sparse_causal", "first_frame"))


class FrameCount:
    """Frames per video of the current forward, shared by a VideoUNet and its inflated layers."""

    def __init__(self) -> None:
        self.value = 1


class FramePooledGroupNorm(nn.GroupNorm):
    """GroupNorm on ``(B*F, C, h, w)`` whose statistics pool over the F frames of each video.

    Equals ``nn.GroupNorm`` applied to the 5-D ``(B, C, F, h, w)`` tensor (what Tune-A-Video's
    ResNet blocks do). Same parameters (``weight``, ``bias``) as the ``nn.GroupNorm`` it replaces.
    ``fused`` (set by :meth:`VideoUNet.use_vidgen_ops`) runs vidgen's kernel
    (:func:`~vidgen.integration.frame_norm.group_norm_over_frames`), else the reference's
    formulation; ``forward(x, silu=True)`` is ``F.silu(forward(x))``, in the same kernel when fused.
    """

    def __init__(self, norm: nn.GroupNorm, frames: FrameCount):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                         device=norm.weight.device if norm.affine else None,
                         dtype=norm.weight.dtype if norm.affine else None)
        self.frames = frames
        self.fused = True

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        frames = self.frames.value
        if self.fused or pools_across_processes():  # frame-parallel: the statistics span every process
            return group_norm_over_frames(x, self, frames, silu=silu)
        out = super().forward(x) if frames == 1 else group_norm_over_frames_reference(x, self, frames)
        return F.silu(out) if silu else out

    def extra_repr(self) -> str:
        return super().extra_repr() + ", statistics pooled over frames" + (", vidgen kernel" if self.fused else "")


class VideoResnetBlock(ResnetBlock2D):
    """A ResNet block of the video UNet: diffusers' ``ResnetBlock2D`` whose GroupNorms are
    :class:`FramePooledGroupNorm` s, each computing the SiLU that follows it (one kernel, the
    normalised map never written). ``forward`` is ``ResnetBlock2D.forward`` for the blocks
    :meth:`inflate` accepts (SiLU, the time embedding added between the convolutions); the
    others keep diffusers' class with pooled norms.
    """

    @staticmethod
    def fuses(resnet: ResnetBlock2D) -> bool:
        """Whether ``forward`` reproduces ``resnet`` (SD 1.x/2.x blocks do)."""
        return type(resnet.nonlinearity) is nn.SiLU and resnet.time_embedding_norm == "default"

    @classmethod
    def inflate(cls, resnet: ResnetBlock2D, frames: FrameCount) -> ResnetBlock2D:
        if not (isinstance(resnet.norm1, nn.GroupNorm) and isinstance(resnet.norm2, nn.GroupNorm)):
            raise ValueError("inflate: ResNet blocks with AdaGroupNorm/SpatialNorm are not Tune-A-Video's")
        resnet.norm1 = FramePooledGroupNorm(resnet.norm1, frames)
        resnet.norm2 = FramePooledGroupNorm(resnet.norm2, frames)
        if cls.fuses(resnet):
            resnet.__class__ = cls
        return resnet

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        hidden_states = self.norm1(input_tensor, silu=True)
        if self.upsample is not None:
            input_tensor, hidden_states = self.upsample(input_tensor), self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor, hidden_states = self.downsample(input_tensor), self.downsample(hidden_states)
        hidden_states = self.conv1(hidden_states)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if temb is not None:
            hidden_states = hidden_states + temb
        hidden_states = self.dropout(self.norm2(hidden_states, silu=True))
        hidden_states = self.conv2(hidden_states)
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + hidden_states) / self.output_scale_factor


class VideoTransformerBlock(BasicTransformerBlock):
    """A Tune-A-Video transformer block: a ``BasicTransformerBlock`` plus temporal attention.

    ``forward`` is the reference's (METHODS.md section 2)::

        h = attn1(norm1(h), num_frames=F) + h        # sparse-causal / first-frame
        h = attn2(norm2(h), text) + h                # per frame
        h = ff(norm3(h)) + h
        h = attn_temp(norm_temp(h), num_frames=F) + h  # over frames, on the (b f) layout

    Made by :meth:`inflate` from a block diffusers built (its class is switched, its modules are
    kept), so a VideoUNet's construction is diffusers' own.
    """

    frames: FrameCount

    @classmethod
    def inflate(cls, block: BasicTransformerBlock, frames: FrameCount) -> "VideoTransformerBlock":
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.pos_embed is not None \
                or hasattr(block, "fuser"):
            raise ValueError("inflate: Tune-A-Video blocks need SD 1.x/2.x-style transformer blocks (layer_norm, "
                             "no only_cross_attention, positional embeddings or GLIGEN); got norm_type="
                             f"{block.norm_type!r}, only_cross_attention={block.only_cross_attention}")
        block.__class__ = cls
        block.frames = frames
        reference = block.attn1.to_q.weight
        block.reset_temporal_layers(reference.device, reference.dtype)
        return block

    def reset_temporal_layers(self, device: torch.device, dtype: torch.dtype) -> None:
        """Fresh ``norm_temp``/``attn_temp`` initialised as the reference: the output weight is zero
        (its bias is not), so a fresh block is close to the identity. Keeps the current processor."""
        processor = self.attn_temp.processor if hasattr(self, "attn_temp") else None
        self.norm_temp = nn.LayerNorm(self.dim, device=device, dtype=dtype)
        self.attn_temp = Attention(
            query_dim=self.dim, heads=self.num_attention_heads, dim_head=self.attention_head_dim,
            dropout=self.dropout, bias=self.attention_bias, upcast_attention=self.attn1.upcast_attention,
        ).to(device=device, dtype=dtype)
        nn.init.zeros_(self.attn_temp.to_out[0].weight)
        if processor is not None:
            self.attn_temp.set_processor(processor)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                added_cond_kwargs=None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("VideoUNet: frame attention takes no attention_mask (Tune-A-Video has none)")
        frames = self.frames.value
        kwargs = dict(cross_attention_kwargs or {})
        hidden_states = self.attn1(self.norm1(hidden_states), num_frames=frames) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                                       attention_mask=encoder_attention_mask, **kwargs) + hidden_states
        normed = self.norm3(hidden_states)
        if self._chunk_size is not None:
            ff_output = _chunked_feed_forward(self.ff, normed, self._chunk_dim, self._chunk_size)
        else:
            ff_output = self.ff(normed)
        hidden_states = ff_output + hidden_states
        return self.attn_temp(self.norm_temp(hidden_states), num_frames=frames) + hidden_states


def _init_signature() -> inspect.Signature:
    """UNet2DConditionModel's constructor signature plus ``frame_mode`` (diffusers' config
    machinery reads a model's config keys from its ``__init__`` signature)."""
    base = inspect.signature(UNet2DConditionModel.__init__)
    extra = inspect.Parameter("frame_mode", inspect.Parameter.KEYWORD_ONLY, default="sparse_causal")
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.name != "self" else p
              for p in base.parameters.values()]
    return base.replace(parameters=params + [extra])


@dataclass
class KeyReport:
    """How a state dict fits a VideoUNet: keys loaded and each misfit, with a reason."""

    loaded: int
    problems: dict[str, str]

    def __str__(self) -> str:
        lines = [f"{self.loaded} tensors loaded, {len(self.problems)} did not fit:"]
        lines += [f"  {key}: {why}" for key, why in sorted(self.problems.items())]
        return "\n".join(lines)


class VideoUNet(UNet2DConditionModel):
    """Tune-A-Video's inflated UNet: takes ``sample (B, C, F, h, w)``, one text embedding per video.

    Build it with :func:`vidgen.inflate` (from a 2-D UNet in memory), :meth:`from_pretrained_2d`
    (from a diffusers image-model folder) or :meth:`from_pretrained` (a folder saved by
    :meth:`save_pretrained`, safetensors). ``frame_mode`` is ``"sparse_causal"``
    (Tune-A-Video) or ``"first_frame"`` (LAMP).

    A VideoUNet is born patched: ``attn1`` and ``attn_temp`` run vidgen's kernels.
    :meth:`use_vidgen_ops` (what ``vidgen.patch``/``vidgen.unpatch`` call) switches either role to
    the reference PyTorch formulation and back; both compute the same function.
    """

    def __init__(self, *args, frame_mode: str = "sparse_causal", **kwargs):
        if frame_mode not in INFLATION_MODES:
            raise ValueError(f"frame_mode: expected one of {', '.join(INFLATION_MODES)}, got {frame_mode!r}")
        super().__init__(*args, **kwargs)
        self.register_to_config(frame_mode=frame_mode)
        self.frames = FrameCount()
        self._inflate_layers()

    __init__.__signature__ = _init_signature()

    def _inflate_layers(self) -> None:
        blocks = [m for m in self.modules() if isinstance(m, BasicTransformerBlock)]
        if not blocks:
            raise ValueError("inflate: the UNet has no transformer blocks to inflate")
        for block in blocks:
            VideoTransformerBlock.inflate(block, self.frames)
        for resnet in [m for m in self.modules() if isinstance(m, ResnetBlock2D)]:
            VideoResnetBlock.inflate(resnet, self.frames)
        if self.conv_norm_out is not None:
            self.conv_norm_out = FramePooledGroupNorm(self.conv_norm_out, self.frames)
        self.use_vidgen_ops(frame_attention=True, temporal_attention=True)

    # -- which implementation runs the two video attention roles ---------------------------------
    def video_blocks(self) -> list[VideoTransformerBlock]:
        return [m for m in self.modules() if isinstance(m, VideoTransformerBlock)]

    def use_vidgen_ops(self, frame_attention: bool = True, temporal_attention: bool = True, *,
                       group_norm: bool | None = None, attention_precision: str = "auto") -> "VideoUNet":
        """Run ``attn1`` / ``attn_temp`` on vidgen's kernels (True) or the reference formulation, and
        the pooled GroupNorms (+ SiLU) on vidgen's fused kernel or the reference's 5-D GroupNorm
        (``group_norm``; by default whenever either attention role runs vidgen's).
        ``attention_precision="fp8"`` gives vidgen's frame attention fp8 scores (inference)."""
        if group_norm is None:
            group_norm = frame_attention or temporal_attention
        mode = self.config.frame_mode
        for block in self.video_blocks():
            block.attn1.set_processor(frame_processor(mode, frame_attention, attention_precision))
            block.attn_temp.set_processor(temporal_processor(temporal_attention))
        for norm in self.modules():
            if isinstance(norm, FramePooledGroupNorm):
                norm.fused = group_norm
        self._vidgen_ops = {"frame_attention": frame_attention, "temporal_attention": temporal_attention,
                            "group_norm": group_norm}
        return self

    @property
    def vidgen_ops(self) -> dict[str, bool]:
        """Which video attention roles currently run vidgen's kernels."""
        return dict(self._vidgen_ops)

    def set_attn_processor(self, processor) -> None:
        # One processor for every attention would turn frame and temporal attention into plain
        # per-frame attention: a different model. Only a per-module dict is accepted.
        if not isinstance(processor, dict):
            raise ValueError("VideoUNet: attn1 (frame), attn2 (text) and attn_temp (temporal) attentions have "
                             "different roles; pass a dict with one processor per module, or call "
                             "use_vidgen_ops(...) to switch implementations")
        super().set_attn_processor(processor)

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None) -> None:
        # diffusers would hand one xformers processor to every attention, frame and temporal included.
        if valid:
            raise ValueError("VideoUNet: xformers attention would replace its frame and temporal attention with "
                             "plain per-frame attention; it runs vidgen's kernels instead (use_vidgen_ops)")

    def set_attention_slice(self, slice_size) -> None:
        raise ValueError("VideoUNet: sliced attention would replace its frame and temporal attention processors; "
                         "vidgen's kernels do not materialise the attention matrix, so slicing is not needed")

    def set_default_attn_processor(self) -> None:
        """The default implementation of a video UNet: the reference formulation for every video role."""
        self.use_vidgen_ops(frame_attention=False, temporal_attention=False)

    def extra_repr(self) -> str:
        ops = self._vidgen_ops
        used = [role for role, on in ops.items() if on]
        return (f"frame_mode={self.config.frame_mode!r}, "
                f"vidgen: {', '.join(used) if used else 'unpatched (reference PyTorch attention)'}")

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, *, cross_attention_kwargs: dict | None = None,
                return_dict: bool = True) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Denoise a batch of videos.

        Args:
            sample: ``(B, C, F, h, w)`` latents.
            timestep: a scalar, or one timestep per video ``(B,)`` (shared by its frames).
            encoder_hidden_states: ``(B, L, C_text)``, one text embedding per video, attended by
                every frame.

        Returns:
            ``UNet3DConditionOutput`` whose ``.sample`` is ``(B, C_out, F, h, w)`` (a view with
            frames outermost in memory), or the 1-tuple when ``return_dict=False``.
        """
        if sample.dim() != 5 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample: expected (B, {self.config.in_channels}, F, h, w), got {tuple(sample.shape)}")
        videos, channels, frames, height, width = sample.shape
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != videos:
            raise ValueError(f"encoder_hidden_states: expected ({videos}, L, C) - one embedding per video - "
                             f"got {tuple(encoder_hidden_states.shape)}")
        if torch.is_tensor(timestep) and timestep.dim() > 0:
            if timestep.numel() != videos:
                raise ValueError(f"timestep: expected a scalar or one per video ({videos}), got shape {tuple(timestep.shape)}")
            timestep = timestep.reshape(videos).repeat_interleave(frames)
        self.frames.value = frames
        per_frame = sample.transpose(1, 2).reshape(videos * frames, channels, height, width)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)
        out = super().forward(per_frame, timestep, text, cross_attention_kwargs=cross_attention_kwargs,
                              return_dict=False)[0]
        out = out.view(videos, frames, *out.shape[1:]).transpose(1, 2)
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    # -- construction and loading ----------------------------------------------------------------
    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel, *, frame_mode: str = "sparse_causal") -> "VideoUNet":
        """Inflate a 2-D UNet. The 2-D weights are shared with ``unet2d`` (no copy); the temporal
        layers are freshly initialised on its device and dtype."""
        if isinstance(unet2d, VideoUNet):
            raise TypeError("unet2d: already a VideoUNet")
        if type(unet2d) is not UNet2DConditionModel:
            raise TypeError(f"unet2d: expected a diffusers UNet2DConditionModel, got {type(unet2d).__name__}")
        config = {k: v for k, v in unet2d.config.items() if not k.startswith("_")}
        _check_inflatable(config)
        _check_head_dims(unet2d)
        state = unet2d.state_dict()
        uninitialised = [name for name, t in state.items() if t.is_meta]
        if uninitialised:
            raise ValueError(f"unet2d: {len(uninitialised)} tensors hold no data (meta), e.g. {uninitialised[:3]}: "
                             "its checkpoint lacked them")
        with torch.device("meta"):
            model = cls.from_config(config, frame_mode=frame_mode)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        not_temporal = [k for k in missing if TEMPORAL_KEY not in k]
        if not_temporal or unexpected:
            raise RuntimeError(f"inflate: 2-D weights do not fit the inflated model: missing {not_temporal[:5]}, "
                               f"unexpected {unexpected[:5]}")
        reference = next(iter(state.values()))
        # The new layers were built on the meta device: materialise and initialise them as the reference.
        for block in model.video_blocks():
            block.reset_temporal_layers(reference.device, reference.dtype)
        leftover = [name for name, t in model.state_dict().items() if t.is_meta]
        if leftover:
            raise RuntimeError(f"inflate: tensors left uninitialised: {leftover[:5]}")
        model.train(unet2d.training)
        return model

    @classmethod
    def from_pretrained_2d(cls, path: str | os.PathLike, subfolder: str | None = "unet", *,
                           frame_mode: str = "sparse_causal", torch_dtype: torch.dtype | None = None) -> "VideoUNet":
        """Load a local diffusers image UNet (strictly) and inflate it; ``_temp.`` layers are new."""
        folder = os.path.join(path, subfolder) if subfolder else os.fspath(path)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"path: no diffusers UNet at {folder} (expected config.json and weights)")
        unet2d = UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype,
                                                      local_files_only=True)
        # diffusers only warns about missing/unexpected keys: Tune-A-Video loads the 2-D weights strictly.
        saved, expected = _checkpoint_keys(folder), set(unet2d.state_dict())
        if saved != expected:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise ValueError(f"path: the UNet checkpoint in {folder} does not fit its config: missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''} (a 2-D SD 1.x/2.x UNet is expected)")
        return cls.from_unet2d(unet2d, frame_mode=frame_mode)

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> KeyReport:
        """Load a state dict saved by the reference Tune-A-Video implementation (same names).

        1x1-conv ``proj_in``/``proj_out`` weights are reshaped to linear ones and back when the
        config differs only in ``use_linear_projection``. Every key that still does not fit is
        reported with the reason; with ``strict`` any misfit raises before anything is loaded.
        """
        own = self.state_dict()
        problems: dict[str, str] = {}
        fitted: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            if key not in own:
                problems[key] = _explain_unexpected(key)
            elif tensor.shape != own[key].shape:
                if tensor.numel() == own[key].numel() and (key.endswith("proj_in.weight") or key.endswith("proj_out.weight")):
                    fitted[key] = tensor.reshape(own[key].shape)
                else:
                    problems[key] = (f"shape {tuple(tensor.shape)} in the checkpoint, {tuple(own[key].shape)} in this "
                                     "model: the checkpoint was made from a UNet with another config (channels, "
                                     "heads or cross_attention_dim)")
            else:
                fitted[key] = tensor
        for key in own.keys() - state_dict.keys():
            problems[key] = ("missing from the checkpoint: it holds no temporal layers (a 2-D UNet? use "
                             "from_pretrained_2d)" if TEMPORAL_KEY in key else
                             "missing from the checkpoint: it is not a full Tune-A-Video UNet state dict")
        report = KeyReport(loaded=len(fitted), problems=problems)
        if strict and problems:
            raise ValueError(f"load_reference_state_dict: {report}")
        self.load_state_dict(fitted, strict=False)
        return report

    @classmethod
    def from_tuneavideo(cls, path: str | os.PathLike, subfolder: str | None = "unet", *,
                        frame_mode: str = "sparse_causal", strict: bool = True) -> "VideoUNet":
        """Load a folder saved by the reference Tune-A-Video code (its ``UNet3DConditionModel``)."""
        folder = os.path.join(path, subfolder) if subfolder else os.fspath(path)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        rename = {"CrossAttnDownBlock3D": "CrossAttnDownBlock2D", "DownBlock3D": "DownBlock2D",
                  "CrossAttnUpBlock3D": "CrossAttnUpBlock2D", "UpBlock3D": "UpBlock2D",
                  "UNetMidBlock3DCrossAttn": "UNetMidBlock2DCrossAttn"}
        for key in ("down_block_types", "up_block_types"):
            config[key] = [rename.get(name, name) for name in config[key]]
        mid = config.get("mid_block_type", "UNetMidBlock3DCrossAttn")
        config["mid_block_type"] = rename.get(mid, mid)
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        model = cls.from_config({k: v for k, v in config.items() if k in known}, frame_mode=frame_mode)
        model.load_reference_state_dict(_read_weights(folder), strict=strict)
        return model


def inflate(unet2d, *, frame_mode: str = "sparse_causal") -> "VideoUNet":
    """Tune-A-Video's video UNet from a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x style).

    ``frame_mode`` is the self-attention across frames: ``"sparse_causal"`` (Tune-A-Video: frame f
    attends to frames 0 and f-1) or ``"first_frame"`` (LAMP). The 2-D weights are shared with
    ``unet2d``; every ``_temp.`` layer is new (zero-initialised output weight). The result runs
    vidgen's kernels for frame and temporal attention (see :meth:`VideoUNet.use_vidgen_ops`).
    """
    if frame_mode not in INFLATION_MODES:
        raise ValueError(f"frame_mode: expected one of {', '.join(map(repr, INFLATION_MODES))}, got {frame_mode!r}")
    return VideoUNet.from_unet2d(unet2d, frame_mode=frame_mode)


def _check_inflatable(config: dict) -> None:
    unsupported = {
        "addition_embed_type": None, "class_embed_type": None, "encoder_hid_dim_type": None,
        "time_cond_proj_dim": None,
    }
    for key, expected in unsupported.items():
        if config.get(key, expected) != expected:
            raise ValueError(f"inflate: Tune-A-Video inflates SD 1.x/2.x UNets; config {key}={config[key]!r} is not supported")
    if config.get("attention_type", "default") != "default":
        raise ValueError(f"inflate: attention_type={config['attention_type']!r} is not supported")


def _check_head_dims(unet2d: UNet2DConditionModel) -> None:
    """Every inflated block's frame (``attn1``) and temporal (``attn_temp``, same heads) attention runs
    on vidgen's kernels: refuse a head dim they cannot run now, not at the first forward."""
    for name, module in unet2d.named_modules():
        if isinstance(module, BasicTransformerBlock):
            attn, head_dim = module.attn1, head_dim_of(module.attn1)
            reason = frame_attention_unsupported_reason(head_dim) or temporal_attention_unsupported_reason(head_dim)
            if reason is not None:
                raise ValueError(f"unet2d: attention head dim {head_dim} ({attn.heads} heads of width {attn.inner_dim}, "
                                 f"in {name}): {reason}; a UNet with fewer heads per width inflates")


def _explain_unexpected(key: str) -> str:
    if ".query." in key or ".key." in key or ".value." in key or ".proj_attn." in key:
        return "old diffusers attention naming (query/key/value/proj_attn); convert the checkpoint to to_q/to_k/to_v/to_out.0"
    if "motion_modules" in key or "temporal_transformer" in key:
        return "an AnimateDiff motion-module key: this is a motion adapter, not a Tune-A-Video UNet"
    return "no parameter of this name in the model: the checkpoint comes from another architecture or config"


def _checkpoint_keys(folder: str) -> set[str]:
    """Parameter names stored in a diffusers model folder, read without loading the tensors."""
    for index in ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(folder, index)):
            with open(os.path.join(folder, index)) as f:
                return set(json.load(f)["weight_map"])
    single = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    return set(_read_weights(folder))


def _read_weights(folder: str) -> dict[str, torch.Tensor]:
    safetensors_path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.isfile(safetensors_path):
        from safetensors.torch import load_file

        return load_file(safetensors_path)
    bin_path = os.path.join(folder, "diffusion_pytorch_model.bin")
    if os.path.isfile(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors or .bin in {folder}")
