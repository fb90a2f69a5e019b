"""``vidgen.patch`` / ``vidgen.unpatch``: drop-in acceleration of diffusers video models.

What a patch does, by role (METHODS.md section 7: modules are chosen by what they do, never
by blanket-replacing every processor):

* temporal attention (``temporal_attention=True``): every AnimateDiff motion module
  (``AnimateDiffTransformer3D``, in ``UNetMotionModel`` and in the SparseCtrl ControlNet) and
  every ``TransformerTemporalModel`` (``UNet3DConditionModel``) runs through vidgen's copy-free
  temporal attention (:func:`vidgen.modules.patch_temporal_transformer`);
  a :class:`~vidgen.models.VideoUNet`'s ``attn_temp`` runs vidgen's kernel.
* frame attention (``frame_attention=True``): Text2Video-Zero's cross-frame processors
  (``CrossFrameAttnProcessor``/``2_0``: every frame attends to frame 0) on self-attention
  modules become vidgen's first-frame kernel, including processors the pipeline installs later
  through ``unet.set_attn_processor`` (it does so inside ``__call__``); a VideoUNet's ``attn1``
  runs vidgen's sparse-causal/first-frame kernel. Spatial self-attention of plain image layers
  and text cross-attention stay on PyTorch SDPA.
* guidance (``guidance=True``): a pipeline's ``DDIMScheduler``/``DDIMInverseScheduler`` is
  swapped for vidgen's fused drop-in (same results, one fused kernel per step).

Patching is per instance (no diffusers class is modified), idempotent, and undone exactly by
:func:`unpatch`: original forwards, processors and schedulers come back. ``print(model)`` shows
a ``vidgen:`` note on every patched module. A :class:`~vidgen.models.VideoUNet` is born patched;
``unpatch`` switches it to the reference PyTorch formulation of the same model.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention import FreeNoiseTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D, MotionAdapter
from diffusers.schedulers import DDIMInverseScheduler, DDIMScheduler

from .models import VideoUNet

_RECORD = "_vidgen_patch"
_MARK = "_vidgen_marks"


@dataclass
class PatchRecord:
    """What one ``patch`` call did to one object: undone in reverse order by :func:`unpatch`."""

    options: dict[str, bool]
    summary: list[str] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)


def patch(obj, *, frame_attention: bool = True, temporal_attention: bool = True, guidance: bool = True):
    """Make a diffusers pipeline or model run on vidgen's kernels; returns ``obj`` (patched in place).

    Args:
        obj: a ``DiffusionPipeline`` (every model component is patched, and its scheduler if
            ``guidance``) or a model: ``UNetMotionModel``, ``SparseControlNetModel``, a UNet with
            Text2Video-Zero processors, a :class:`~vidgen.models.VideoUNet`.
        frame_attention, temporal_attention, guidance: which roles to accelerate.

    Patching twice with the same options does nothing; with other options, the first patch is
    undone first. Raises ``ValueError`` for a diffusers feature a patch cannot reproduce
    (FreeNoise's windowed temporal attention).
    """
    options = {"frame_attention": bool(frame_attention), "temporal_attention": bool(temporal_attention),
               "guidance": bool(guidance)}
    existing = getattr(obj, _RECORD, None)
    if existing is not None:
        if existing.options == options:
            return obj
        unpatch(obj)
    record = PatchRecord(options)
    try:
        if isinstance(obj, DiffusionPipeline):
            _patch_pipeline(obj, record)
        elif isinstance(obj, nn.Module):
            _patch_model(obj, record)
        else:
            raise TypeError(f"obj: expected a diffusers pipeline or model (torch.nn.Module), got {type(obj).__name__}")
    except BaseException:
        _run_undo(record)
        raise
    _set_attr(obj, _RECORD, record)
    return obj


def unpatch(obj):
    """Undo :func:`patch` on ``obj``: everything it replaced is restored; returns ``obj``.

    A :class:`~vidgen.models.VideoUNet` goes to its reference PyTorch attention whether it was
    patched explicitly or born patched.
    """
    record = getattr(obj, _RECORD, None)
    if record is not None:
        _run_undo(record)
        _del_attr(obj, _RECORD)
    if isinstance(obj, VideoUNet):
        obj.use_vidgen_ops(frame_attention=False, temporal_attention=False)
    return obj


def is_patched(obj) -> bool:
    return getattr(obj, _RECORD, None) is not None


# ----------------------------------------------------------------------------------------------
def _patch_pipeline(pipe: DiffusionPipeline, record: PatchRecord) -> None:
    for name, component in pipe.components.items():
        # A MotionAdapter only holds weights (the pipeline's UNetMotionModel has loaded copies).
        if isinstance(component, nn.Module) and not isinstance(component, MotionAdapter):
            before = is_patched(component)
            patch(component, **record.options)
            if not before and is_patched(component):
                record.undo.append(lambda c=component: unpatch(c))
                record.summary.append(f"{name}: {', '.join(getattr(component, _RECORD).summary) or 'nothing to patch'}")
    if record.options["temporal_attention"] and hasattr(pipe, "enable_free_noise"):
        # FreeNoise swaps the motion modules' blocks for windowed ones, which the patched
        # forward would not run: refuse it while patched (an instance attribute, undone below).
        def enable_free_noise(self, *args, **kwargs):
            raise ValueError("enable_free_noise: this pipeline is patched by vidgen, whose temporal kernel does not "
                             "compute FreeNoise's windowed attention; call vidgen.unpatch(pipe) first, or patch with "
                             "temporal_attention=False")

        pipe.__dict__["enable_free_noise"] = types.MethodType(enable_free_noise, pipe)
        record.undo.append(lambda: pipe.__dict__.pop("enable_free_noise", None))
    if record.options["guidance"]:
        for name in ("scheduler", "inverse_scheduler"):
            original = getattr(pipe, name, None)
            fused = _fused_scheduler_for(original)
            if fused is not None:
                setattr(pipe, name, fused)
                record.undo.append(lambda n=name, s=original: setattr(pipe, n, s))
                record.summary.append(f"{name}: {type(original).__name__} -> {type(fused).__name__}")


def _fused_scheduler_for(scheduler):
    from .schedulers import FusedDDIMInverseScheduler, FusedDDIMScheduler

    # Exact class match: a subclass may change the step, and the fused one reproduces DDIM's only.
    if type(scheduler) is DDIMScheduler:
        return FusedDDIMScheduler.from_config(scheduler.config)
    if type(scheduler) is DDIMInverseScheduler:
        return FusedDDIMInverseScheduler.from_config(scheduler.config)
    return None


def _patch_model(model: nn.Module, record: PatchRecord) -> None:
    options = record.options
    if isinstance(model, VideoUNet):
        model.use_vidgen_ops(frame_attention=options["frame_attention"], temporal_attention=options["temporal_attention"])
        record.undo.append(lambda: model.use_vidgen_ops(False, False))
        record.summary += [role for role in ("frame_attention", "temporal_attention") if options[role]]
        return
    if options["temporal_attention"]:
        _patch_motion_modules(model, record)
    if options["frame_attention"]:
        _patch_cross_frame_attention(model, record)
    if record.summary:
        _mark(model, "vidgen: " + ", ".join(record.summary), record)


def _patch_motion_modules(model: nn.Module, record: PatchRecord) -> None:
    from .modules import patch_temporal_transformer, unpatch_temporal_transformer

    motion_modules = [m for m in model.modules() if isinstance(m, (AnimateDiffTransformer3D, TransformerTemporalModel))]
    for module in motion_modules:
        if any(isinstance(b, FreeNoiseTransformerBlock) for b in module.transformer_blocks):
            raise ValueError("patch: FreeNoise is enabled on this model; its windowed temporal attention is not "
                             "what vidgen's temporal kernel computes. Call pipe.disable_free_noise() before "
                             "patching, or patch(..., temporal_attention=False)")
    for module in motion_modules:
        patch_temporal_transformer(module)
        record.undo.append(lambda m=module: unpatch_temporal_transformer(m))
        _mark(module, "vidgen: copy-free temporal attention", record)
    if motion_modules:
        record.summary.append(f"temporal_attention ({len(motion_modules)} motion modules)")


# -- Text2Video-Zero ----------------------------------------------------------------------------
def _cross_frame_types() -> tuple[type, ...]:
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as t2v
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero_sdxl as t2v_xl

    return (t2v.CrossFrameAttnProcessor, t2v.CrossFrameAttnProcessor2_0,
            t2v_xl.CrossFrameAttnProcessor, t2v_xl.CrossFrameAttnProcessor2_0)


class FirstFrameAttnProcessor:
    """Text2Video-Zero's cross-frame attention on vidgen's first-frame kernel.

    Same semantics as the processor it replaces (kept as ``original``): the batch is
    ``batch_size`` groups of ``frames = B // batch_size`` frames ("(b f)"), each frame's
    self-attention reads frame 0's keys and values. Calls with text (cross-attention) or a mask
    go to the original processor unchanged.
    """

    def __init__(self, original):
        from .processors import FrameAttnProcessor

        self.original = original
        self.batch_size = original.batch_size
        self.first_frame = FrameAttnProcessor(mode="first_frame")

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        frames = max(1, hidden_states.shape[0] // self.batch_size)
        return self.first_frame(attn, hidden_states, num_frames=frames)


def _self_attention_modules(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention) and not m.is_cross_attention]


def _swap_cross_frame_processors(model: nn.Module) -> int:
    """Replace every cross-frame processor on a self-attention module; returns how many."""
    kinds = _cross_frame_types()
    swapped = 0
    for attn in _self_attention_modules(model):
        if isinstance(attn.processor, kinds):
            attn.set_processor(FirstFrameAttnProcessor(attn.processor))
            _mark(attn, "vidgen: first-frame attention (Text2Video-Zero)", None)
            swapped += 1
        elif not isinstance(attn.processor, FirstFrameAttnProcessor):
            _unmark(attn)  # another processor was installed since: the note goes with ours
    return swapped


def _restore_cross_frame_processors(model: nn.Module) -> None:
    for attn in _self_attention_modules(model):
        if isinstance(attn.processor, FirstFrameAttnProcessor):
            attn.set_processor(attn.processor.original)
            _unmark(attn)


def _patch_cross_frame_attention(model: nn.Module, record: PatchRecord) -> None:
    swapped = _swap_cross_frame_processors(model)
    record.undo.append(lambda: _restore_cross_frame_processors(model))
    if swapped:
        record.summary.append(f"frame_attention ({swapped} Text2Video-Zero cross-frame processors)")
    # Text2Video-Zero's pipeline installs its processors inside __call__ via set_attn_processor:
    # translate them as they arrive (an instance attribute; the class method is untouched).
    if isinstance(model, UNet2DConditionModel) and "set_attn_processor" not in model.__dict__:
        def set_attn_processor(self, processor, **kwargs):
            type(self).set_attn_processor(self, processor, **kwargs)
            _swap_cross_frame_processors(self)

        model.set_attn_processor = types.MethodType(set_attn_processor, model)
        record.undo.append(lambda: model.__dict__.pop("set_attn_processor", None))
        if not swapped:
            record.summary.append("frame_attention (Text2Video-Zero processors when installed)")


# -- bookkeeping ----------------------------------------------------------------------------------
def _marked_extra_repr(self) -> str:
    base = type(self).extra_repr(self)
    return ", ".join(part for part in (base, *self.__dict__[_MARK]) if part)


def _mark(module: nn.Module, note: str, record: PatchRecord | None) -> None:
    """Show ``note`` in ``print(module)`` (instance-level ``extra_repr``)."""
    module.__dict__.setdefault(_MARK, [])
    if note not in module.__dict__[_MARK]:
        module.__dict__[_MARK].append(note)
    module.__dict__["extra_repr"] = types.MethodType(_marked_extra_repr, module)
    if record is not None:
        record.undo.append(lambda: _unmark(module))


def _unmark(module: nn.Module) -> None:
    module.__dict__.pop(_MARK, None)
    module.__dict__.pop("extra_repr", None)


def _run_undo(record: PatchRecord) -> None:
    while record.undo:
        record.undo.pop()()


def _set_attr(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # bypasses nn.Module/pipeline registration: bookkeeping only


def _del_attr(obj, name: str) -> None:
    object.__delattr__(obj, name)
