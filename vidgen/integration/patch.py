"""``vidgen.patch`` / ``vidgen.unpatch``: drop-in acceleration of diffusers video models.

What a patch does, by role (METHODS.md section 7: modules are chosen by what they do, never
by blanket-replacing every processor):

* temporal attention (``temporal_attention=True``): every AnimateDiff motion module
  (``AnimateDiffTransformer3D``, in ``UNetMotionModel`` and in the SparseCtrl ControlNet) and
  every ``TransformerTemporalModel`` (``UNet3DConditionModel``) runs through vidgen's copy-free
  temporal attention (:func:`vidgen.integration.motion.patch_motion_module`), PAG's perturbed
  attention included (``AnimateDiffPAGPipeline`` puts it on the mid block's motion module), and
  FreeNoise's windowed blocks and split inference (:mod:`vidgen.integration.free_noise`), enabled
  before or after patching; Latte's temporal blocks (``LatteTransformer3DModel``,
  :mod:`vidgen.integration.latte`); Stable Video Diffusion's temporal blocks
  (``TransformerSpatioTemporalModel``, :mod:`vidgen.integration.svd`); a :class:`~vidgen.VideoUNet`'s
  ``attn_temp`` runs vidgen's kernel.
* GroupNorm over frames (with either attention role): a :class:`~vidgen.VideoUNet`'s ResNet
  GroupNorms and the SiLU after them run vidgen's fused kernel (the motion modules' GroupNorm is
  part of their copy-free forward).
* cross-attention against one token (``cross_attention=True``): in Stable Video Diffusion's
  spatio-temporal transformers (patched with the temporal blocks), the image-embedding
  cross-attentions run :class:`~vidgen.integration.processors.SingleTokenCrossAttnProcessor`
  (the context's value projection, no scores; any other call: the module's own processor).
* frame attention (``frame_attention=True``): Text2Video-Zero's cross-frame processors
  (``CrossFrameAttnProcessor``/``2_0``: every frame attends to frame 0) on self-attention
  modules become vidgen's first-frame kernel, including processors the pipeline installs later
  through ``unet.set_attn_processor`` (it does so inside ``__call__``); a VideoUNet's ``attn1``
  runs vidgen's sparse-causal/first-frame kernel. Spatial self-attention of plain image layers
  and text cross-attention stay on PyTorch SDPA.
* guidance (``guidance=True``): a pipeline's ``DDIMScheduler``/``DDIMInverseScheduler``/
  ``EulerDiscreteScheduler`` is swapped for vidgen's fused drop-in (same results, one fused kernel
  per step).
* feed-forward (``feed_forward=True``, off by default): the denoiser's diffusers ``GEGLU``
  projections run :func:`vidgen.ops.geglu`, the projection, GELU and product in one kernel
  (:mod:`vidgen.integration.feed_forward`); a ``proj`` that is not a plain ``nn.Linear`` (LoRA)
  stays diffusers'.
* residual adds (``residual_adds=True``, off by default): the denoiser's SD-style transformer blocks
  (diffusers' ``BasicTransformerBlock`` with norm type ``layer_norm``, Text2Video-Zero's cross-frame
  attention included, Tune-A-Video's video blocks with their temporal attention), the motion modules'
  blocks (run by their fused forward) and Stable Video Diffusion's temporal blocks add each half's
  residual in the epilogue of the projection that ends it (``to_out[0]``, the feed-forward's last
  Linear), :func:`vidgen.ops.linear_residual` (:mod:`vidgen.integration.residual_adds`); a half it cannot fuse (another attention processor, a
  mask, a LoRA layer, a hook) keeps diffusers' separate add and says why.
* CUDA graphs (``cuda_graph=True``, off by default): the denoiser's forward (the UNet of a
  pipeline, or the patched UNet itself) is captured once per call signature and replayed
  (:mod:`vidgen.integration.graphs`): the same values, one launch per step instead of hundreds.
* torch.compile (``compile=True`` or a dict of torch.compile's arguments, off by default): the
  denoiser's repeated blocks (ResNet and transformer blocks, motion modules) are compiled one
  by one with Inductor (:mod:`vidgen.integration.compile`), vidgen's ops opaque custom ops
  inside them.

Nothing is replaced that vidgen cannot run: a motion module the fused forward does not
reproduce, or whose head dim the temporal kernel does not serve, keeps diffusers' forward; a
Text2Video-Zero processor on a module whose head dim the first-frame kernel does not serve
stays diffusers'. :func:`patch_report` lists what was replaced and what was left, with why.
At run time the same goes per call: a processor handed a shape or dtype its kernel does not
serve computes the same attention in PyTorch and says so once (:class:`~vidgen.FallbackWarning`).

Patching is per instance (no diffusers class is modified), idempotent, and undone exactly by
:func:`unpatch`: original forwards, processors and schedulers come back. ``print(model)`` shows
a ``vidgen:`` note on every patched module. A :class:`~vidgen.VideoUNet` is born patched;
``unpatch`` switches it to the reference PyTorch formulation of the same model.
"""
from __future__ import annotations

import functools
import types
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D, MotionAdapter
from diffusers.schedulers import DDIMInverseScheduler, DDIMScheduler

from ..ops.frame_attention import PRECISIONS, frame_attention_unsupported_reason
from .compile import compile_options, compile_repeated_blocks, uncompile_blocks
from .layout import head_dim_of
from .processors import FirstFrameAttnProcessor
from .video_unet import VideoUNet

__all__ = ["PatchEntry", "PatchReport", "is_patched", "patch",
           "patch_report", "unpatch"]

_RECORD = "_vidgen_patch"
_REPORT = "_vidgen_patch_report"
_MARK = "_vidgen_marks"


@dataclass(frozen=True)
class PatchEntry:
    """One line of a :class:`PatchReport`.

    ``where`` is a module path inside the patched object (prefixed with the component name in
    a pipeline: ``"unet.mid_block.motion_modules.0"``), or a component (``"scheduler"``);
    ``what`` is what runs there; ``why`` says why a kept entry stays on diffusers' path.
    """

    where: str
    what: str
    why: str = ""


@dataclass
class PatchReport:
    """What :func:`patch` did to one object: the parts it replaced with vidgen's, and the parts it
    left on diffusers' path with the reason. ``print(report)`` lists both, grouped.

    Shown by :func:`patch_report`. A report with nothing in ``replaced`` means the object was
    left exactly as it was (and :func:`is_patched` is false).
    """

    target: str
    options: dict[str, bool]
    replaced: list[PatchEntry] = field(default_factory=list)
    kept: list[PatchEntry] = field(default_factory=list)

    @property
    def patched(self) -> bool:
        return bool(self.replaced)

    def __str__(self) -> str:
        if not self.options:
            return f"vidgen: {self.target} is not patched"
        enabled = ", ".join(f"{role}={value}" for role, value in self.options.items())
        lines = [f"vidgen.patch({self.target}; {enabled}): "
                 + (f"{len(self.replaced)} replaced" if self.replaced else "nothing patched")
                 + f", {len(self.kept)} left on diffusers' path"]
        if self.replaced:
            lines.append("replaced:")
            lines += [f"  {what}: {where}" for (what, _), where in _grouped(self.replaced)]
        if self.kept:
            lines.append("left on diffusers' path:")
            lines += [f"  {what}: {where}\n    because {why}" for (what, why), where in _grouped(self.kept)]
        return "\n".join(lines)

    def _absorb(self, other: "PatchReport", prefix: str) -> None:
        """Add a component's entries under ``prefix`` (its name in the pipeline)."""
        def under(entry: PatchEntry) -> PatchEntry:
            return PatchEntry(f"{prefix}.{entry.where}" if entry.where else prefix, entry.what, entry.why)

        self.replaced += [under(e) for e in other.replaced]
        self.kept += [under(e) for e in other.kept]


def _grouped(entries: list[PatchEntry]) -> list[tuple[tuple[str, str], str]]:
    """Entries with the same (what, why) on one line: the first paths, then how many in all."""
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        groups.setdefault((entry.what, entry.why), []).append(entry.where)
    shown = []
    for key, places in groups.items():
        places = [place or "(the object itself)" for place in places]
        listed = ", ".join(places[:3]) + (f", ... ({len(places)} in all)" if len(places) > 3 else "")
        shown.append((key, listed))
    return shown


@dataclass
class PatchRecord:
    """What one ``patch`` call did to one object: undone in reverse order by :func:`unpatch`."""

    options: dict[str, bool]
    report: PatchReport
    summary: list[str] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)


def patch(obj, *, frame_attention: bool = True, temporal_attention: bool = True, guidance: bool = True,
          cuda_graph: bool = False, compile: bool | dict = False, attention_precision: str = "auto",
          cross_attention: bool = True, frame_parallel=False, guidance_parallel: bool = False,
          feed_forward: bool = False, residual_adds: bool = False):
    """Make a diffusers pipeline or model run on vidgen's kernels; returns ``obj`` (patched in place).

    Args:
        obj: a ``DiffusionPipeline`` (every model component is patched, and its scheduler if
            ``guidance``) or a model: ``UNetMotionModel``, ``SparseControlNetModel``, a UNet with
            Text2Video-Zero processors, a :class:`~vidgen.VideoUNet`.
        frame_attention, temporal_attention, guidance: which roles to accelerate.
        cuda_graph: also replay the denoiser's forward from CUDA graphs, one captured per call
            signature (inference on CUDA only: other calls run the eager forward and say why once).
        compile: also compile the denoiser's repeated blocks with torch.compile (regional
            compilation: each ResNet block, transformer block and motion module on its own, so
            compile time stays a few graphs); ``True`` for torch.compile's defaults (Inductor), or
            a dict of its keyword arguments, e.g. ``{"mode": "reduce-overhead"}``. Compiling
            happens on the first call of each block. ``unpatch`` restores the eager blocks.
        attention_precision: ``"auto"`` (the activations' precision) or ``"fp8"``: frame attention's
            scores on e4m3 tensor cores (sm_90, inference; see :func:`vidgen.ops.frame_attention`).
        cross_attention: with ``temporal_attention``, Stable Video Diffusion's single-token
            cross-attentions without scores (see the module docstring).
        frame_parallel: ``True`` (the default process group) or a ``torch.distributed`` process group:
            every rank runs the denoiser on its contiguous shard of the frames and returns the whole
            video, equal to one process's (:mod:`vidgen.integration.frame_parallel`). Every rank calls
            the pipeline with the same arguments. AnimateDiff's ``UNetMotionModel``, Tune-A-Video's
            :class:`~vidgen.VideoUNet`, ``UNet3DConditionModel`` and Stable Video Diffusion's
            ``UNetSpatioTemporalConditionModel`` (on vidgen's temporal and frame attention).
        guidance_parallel: with ``frame_parallel`` on an even number of ranks, the two halves of the
            batch (classifier-free guidance's unconditional and conditional branches) run on the two
            halves of the ranks.
        feed_forward: also run the denoiser's GEGLU feed-forward projections (diffusers' ``GEGLU``)
            on vidgen's fused matmul + GELU kernel (:mod:`vidgen.integration.feed_forward`). Off by
            default until a GPU run has timed the kernel against cuBLAS + the separate GELU.
        residual_adds: also run the residual adds of the denoiser's SD-style transformer blocks
            (Text2Video-Zero's cross-frame attention included), of the motion modules' blocks and of
            Stable Video Diffusion's temporal blocks in their output projections' epilogues
            (:mod:`vidgen.integration.residual_adds`). Off by default, as ``feed_forward``, until a
            GPU run has timed the kernel against cuBLAS + the add.

    What was replaced, and what stays on diffusers' path and why (a head dim the kernels do not
    serve, a scheduler other than DDIM and Euler, a motion module of another structure, ...), is in
    :func:`patch_report` ``(obj)``. ``obj`` itself is returned, so ``pipe = vidgen.patch(pipe)``
    and ``torch.compile(vidgen.patch(unet))`` keep working. When nothing in ``obj`` is vidgen's
    to accelerate, ``obj`` is left untouched, a warning says so and the report explains why.

    Patching twice with the same options does nothing; with other options, the first patch is
    undone first. A patched pipeline's methods that restructure its denoiser
    (``enable_free_noise``, ``disable_free_noise``, ``enable_free_noise_split_inference``,
    ``load_ip_adapter``, ``unload_ip_adapter``) re-patch it after they run, so the report
    describes the pipeline as it is.
    """
    if attention_precision not in PRECISIONS:
        raise ValueError(f"attention_precision: expected one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {attention_precision!r}")
    options = {"frame_attention": bool(frame_attention), "temporal_attention": bool(temporal_attention),
               "guidance": bool(guidance)}
    # Listed only when asked for, so reports of the three roles read as before.
    if cuda_graph:
        options["cuda_graph"] = True
    compile_kwargs = compile_options(compile)
    if compile_kwargs is not None:
        if cuda_graph and compile_kwargs.get("mode") in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile: mode={compile_kwargs['mode']!r} replays CUDA graphs itself; with "
                             "cuda_graph=True pass compile=True (default mode) or drop cuda_graph")
        options["compile"] = compile_kwargs or True
    if attention_precision != "auto":
        options["attention_precision"] = attention_precision
    if not cross_attention:
        options["cross_attention"] = False
    if feed_forward:
        options["feed_forward"] = True
    if residual_adds:
        options["residual_adds"] = True
    if frame_parallel is not False and frame_parallel is not None:
        from .frame_parallel import FrameParallel, resolve_group

        if cuda_graph:
            raise ValueError("cuda_graph: a captured forward cannot hold frame_parallel's collectives; "
                             "use one of the two")
        if compile_kwargs is not None:
            raise ValueError("compile: the compiled blocks would hold frame_parallel's collectives, which vidgen "
                             "does not compile; use one of the two")
        options["frame_parallel"] = FrameParallel(resolve_group(frame_parallel, guidance_parallel), guidance_parallel)
    elif guidance_parallel:
        raise ValueError("guidance_parallel: splits the ranks of frame_parallel; pass frame_parallel=True too")
    existing = getattr(obj, _RECORD, None)
    if existing is not None:
        if existing.options == options:
            return obj
        unpatch(obj)
    record = _apply(obj, options)
    if record.report.patched:
        _set_attr(obj, _RECORD, record)
    else:
        _run_undo(record)  # bookkeeping only (e.g. the set_attn_processor hook): nothing to keep
        reasons = "; ".join(sorted({f"{e.what}: {e.why}" for e in record.report.kept})) or "no parts"
        warnings.warn(f"vidgen.patch: nothing was patched in this {type(obj).__name__} ({reasons}); it runs "
                      "exactly as before. vidgen.patch_report(obj) has the details.", UserWarning, stacklevel=2)
    _set_attr(obj, _REPORT, record.report)
    return obj


def _apply(obj, options: dict[str, bool]) -> PatchRecord:
    """Patch ``obj`` with ``options``; returns the record (not yet stored on ``obj``)."""
    record = PatchRecord(options, PatchReport(type(obj).__name__, dict(options)))
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
    return record


def unpatch(obj):
    """Undo :func:`patch` on ``obj``: everything it replaced is restored; returns ``obj``.

    A :class:`~vidgen.VideoUNet` goes to its reference PyTorch attention whether it was
    patched explicitly or born patched.
    """
    record = getattr(obj, _RECORD, None)
    if record is not None:
        _run_undo(record)
        _del_attr(obj, _RECORD)
    if _REPORT in getattr(obj, "__dict__", {}):
        _del_attr(obj, _REPORT)
    if isinstance(obj, VideoUNet):
        obj.use_vidgen_ops(frame_attention=False, temporal_attention=False)
    return obj


def is_patched(obj) -> bool:
    """Whether :func:`patch` replaced something in ``obj`` that :func:`unpatch` has not restored."""
    return getattr(obj, _RECORD, None) is not None


def patch_report(obj) -> PatchReport:
    """The :class:`PatchReport` of the last :func:`patch` of ``obj`` (``print`` it to read it).

    An object never patched, or unpatched since, gets a report that says so. A
    :class:`~vidgen.VideoUNet` runs vidgen's kernels from birth: its report lists the
    roles it runs on them.
    """
    report = getattr(obj, "__dict__", {}).get(_REPORT)
    if report is not None:
        return report
    if isinstance(obj, VideoUNet):
        report = PatchReport(type(obj).__name__, dict(obj.vidgen_ops, guidance=False))
        _report_video_unet(obj, report)
        return report
    return PatchReport(type(obj).__name__, {})


# ----------------------------------------------------------------------------------------------
def _patch_pipeline(pipe: DiffusionPipeline, record: PatchRecord) -> None:
    report = record.report
    for name, component in pipe.components.items():
        if isinstance(component, MotionAdapter):
            # It only holds weights (the pipeline's UNetMotionModel has loaded copies).
            report.kept.append(PatchEntry(name, "MotionAdapter", "weights only: the UNet runs its loaded copy"))
        elif isinstance(component, nn.Module):
            if is_patched(component):  # patched on its own before: the pipeline leaves it to its owner
                report._absorb(patch_report(component), name)
                continue
            component_record = _apply(component, record.options)
            report._absorb(component_record.report, name)
            if component_record.report.patched:
                _set_attr(component, _RECORD, component_record)
                _set_attr(component, _REPORT, component_record.report)
                record.undo.append(lambda c=component: unpatch(c))
                record.summary.append(f"{name}: {', '.join(component_record.summary)}")
            else:
                _run_undo(component_record)
    for method in _RESTRUCTURING_METHODS:
        if hasattr(pipe, method):
            _repatch_after(pipe, method, record)
    if record.options.get("frame_parallel") and hasattr(pipe, "decode_latents"):
        from diffusers import StableVideoDiffusionPipeline

        parallel = record.options["frame_parallel"]
        if isinstance(pipe, StableVideoDiffusionPipeline):  # its VAE decoder mixes the frames of a chunk
            decode, what = parallel.decode_latent_chunks, "each rank its decode chunks"
        else:
            decode, what = parallel.decode_latents, "each rank its frames"
        pipe.__dict__["decode_latents"] = decode(pipe.decode_latents)
        record.undo.append(lambda: pipe.__dict__.pop("decode_latents", None))
        report.replaced.append(PatchEntry("decode_latents", f"frame-parallel VAE decode ({what}, one all-gather)"))
    if record.options.get("cuda_graph") and not any("CUDA graphs" in e.what for e in report.replaced):
        report.kept.append(PatchEntry("", "cuda_graph", "no UNet in this pipeline to capture"))
    if "compile" in record.options and not any("torch.compile" in e.what for e in report.replaced):
        report.kept.append(PatchEntry("", "compile", "no UNet in this pipeline to compile"))
    for name in ("scheduler", "inverse_scheduler"):
        original = getattr(pipe, name, None)
        if original is None:
            continue
        fused = _fused_scheduler_for(original) if record.options["guidance"] else None
        if fused is not None:
            setattr(pipe, name, fused)
            record.undo.append(lambda n=name, s=original: setattr(pipe, n, s))
            record.summary.append(f"{name}: {type(original).__name__} -> {type(fused).__name__}")
            report.replaced.append(PatchEntry(name, f"{type(fused).__name__} (one fused kernel per step)"))
        else:
            why = ("guidance=False" if not record.options["guidance"]
                   else "the fused step reproduces DDIMScheduler/DDIMInverseScheduler/EulerDiscreteScheduler "
                   "exactly, not this one")
            report.kept.append(PatchEntry(name, type(original).__name__, why))


# Pipeline methods that restructure the denoiser: FreeNoise swaps the motion modules' blocks, split
# inference wraps them, IP-Adapter loading replaces attention processors and adds an image
# projection. The patched modules read their parts at each call and so run the new structure
# anyway; re-patching afterwards keeps the patch report (and the parts a patch decides on) true.
_RESTRUCTURING_METHODS = ("enable_free_noise", "disable_free_noise", "enable_free_noise_split_inference",
                          "load_ip_adapter", "unload_ip_adapter")


def _repatch_after(pipe: DiffusionPipeline, name: str, record: PatchRecord) -> None:
    """Make ``pipe.<name>`` re-patch the pipeline after it runs (an instance attribute, undone by unpatch)."""
    def method(self, *args, **kwargs):
        result = getattr(type(self), name)(self, *args, **kwargs)
        options = getattr(self, _RECORD).options
        unpatch(self)
        patch(self, **options)
        return result

    pipe.__dict__[name] = types.MethodType(functools.wraps(getattr(type(pipe), name))(method), pipe)
    record.undo.append(lambda: pipe.__dict__.pop(name, None))


def _fused_scheduler_for(scheduler):
    from .schedulers import (FusedDDIMInverseScheduler, FusedDDIMScheduler, FusedEulerDiscreteScheduler,
                             euler_unsupported_reason)

    # Exact class match: a subclass may change the step, and the fused ones reproduce these only.
    if type(scheduler) is DDIMScheduler:
        return FusedDDIMScheduler.from_config(scheduler.config)
    if type(scheduler) is DDIMInverseScheduler:
        return FusedDDIMInverseScheduler.from_config(scheduler.config)
    if euler_unsupported_reason(scheduler) is None:
        return FusedEulerDiscreteScheduler.from_config(scheduler.config)
    return None


def _patch_model(model: nn.Module, record: PatchRecord) -> None:
    options, report = record.options, record.report
    if isinstance(model, VideoUNet):
        model.use_vidgen_ops(frame_attention=options["frame_attention"], temporal_attention=options["temporal_attention"],
                             attention_precision=options.get("attention_precision", "auto"))
        record.undo.append(lambda: model.use_vidgen_ops(False, False))
        record.summary += [role for role in ("frame_attention", "temporal_attention") if options[role]]
        _report_video_unet(model, report)
        _patch_feed_forwards(model, record)
        _patch_residual_adds(model, record)
        _graph_denoiser(model, record)
        _shard_denoiser(model, record)
        _compile_denoiser(model, record)
        return
    covered: set[int] = set()  # attention modules a motion module entry already accounts for
    if options["temporal_attention"]:
        _patch_motion_modules(model, record, covered)
        _patch_latte(model, record, covered)
        _patch_spatio_temporal(model, record, covered)
    else:
        for path, module in _motion_modules(model):
            covered.update(id(m) for m in module.modules())
            report.kept.append(PatchEntry(path, "motion module", "temporal_attention=False"))
        for path, module in _latte_models(model):
            covered.update(id(m) for block in module.temporal_transformer_blocks for m in block.modules())
            report.kept.append(PatchEntry(path, "Latte temporal blocks", "temporal_attention=False"))
        for path, module in _spatio_temporal_models(model):
            covered.update(id(m) for block in module.temporal_transformer_blocks for m in block.modules())
            report.kept.append(PatchEntry(path, "SVD temporal blocks", "temporal_attention=False"))
    _report_frame_convolutions(model, report)
    if options["frame_attention"]:
        _patch_cross_frame_attention(model, record, covered)
    _report_image_attention(model, report, covered)
    _patch_feed_forwards(model, record)
    _patch_residual_adds(model, record)
    _graph_denoiser(model, record)
    _shard_denoiser(model, record)
    _compile_denoiser(model, record)
    if not report.replaced and not report.kept:
        report.kept.append(PatchEntry("", type(model).__name__, "no motion module, Text2Video-Zero processor or "
                                                                "diffusers Attention layer: nothing vidgen accelerates"))
    if record.summary:
        _mark(model, "vidgen: " + ", ".join(record.summary), record)


def _is_denoiser(model: nn.Module) -> bool:
    """The UNets whose forward is a pipeline's denoising step: what cuda_graph, compile, frame_parallel
    and the opt-in fusions act on."""
    from diffusers import UNet3DConditionModel, UNetMotionModel, UNetSpatioTemporalConditionModel

    return isinstance(model, (UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel,  # VideoUNet included
                              UNetSpatioTemporalConditionModel))


def _denoiser_option_served(model: nn.Module, record: PatchRecord, option: str, what: str) -> bool:
    """Whether ``option`` (on) acts on ``model``: a denoiser UNet. Latte's transformer, the one other
    video denoiser vidgen patches, runs its temporal blocks as functions rather than module calls;
    the option leaves it as it is, and the report says so."""
    from diffusers import LatteTransformer3DModel

    if _is_denoiser(model):
        return True
    if isinstance(model, LatteTransformer3DModel):
        record.report.kept.append(PatchEntry("", what, f"{option} acts on UNet denoisers only; Latte's transformer "
                                                       "runs eagerly (torch.compile of the whole model works)"))
    return False


def _graph_denoiser(model: nn.Module, record: PatchRecord) -> None:
    if not record.options.get("cuda_graph") or not _denoiser_option_served(model, record, "cuda_graph",
                                                                            "forward replayed from CUDA graphs"):
        return
    from .graphs import graph_forward, ungraph_forward

    graph_forward(model)
    record.undo.append(lambda: ungraph_forward(model))
    record.summary.append("cuda_graph")
    record.report.replaced.append(PatchEntry("", "forward replayed from CUDA graphs (one per call signature)"))


def _compile_denoiser(model: nn.Module, record: PatchRecord) -> None:
    options = record.options.get("compile")
    if options is None or not _denoiser_option_served(model, record, "compile", "repeated blocks compiled"):
        return
    blocks = compile_repeated_blocks(model, {} if options is True else options)
    record.undo.append(lambda: uncompile_blocks(blocks))
    record.summary.append("torch.compile")
    record.report.replaced.append(PatchEntry("", f"repeated blocks compiled by torch.compile ({len(blocks)} blocks)"))


def _patch_feed_forwards(model: nn.Module, record: PatchRecord) -> None:
    """feed_forward: every diffusers GEGLU in the denoiser (Stable Video Diffusion's too) on vidgen's fused
    projection + GELU."""
    from diffusers.models.activations import GEGLU

    from .feed_forward import patch_geglu, unpatch_geglu

    _patch_each(model, record, "feed_forward", GEGLU, patch_geglu, unpatch_geglu,
                ("GEGLU feed-forward", "projection + GELU in one kernel", "GEGLU"))


def _patch_residual_adds(model: nn.Module, record: PatchRecord) -> None:
    """residual_adds: the temporal layers vidgen runs on the image layout (the motion modules' blocks,
    Stable Video Diffusion's temporal blocks: a flag of their fused forward), then every other diffusers
    BasicTransformerBlock of the denoiser (Stable Video Diffusion's spatial blocks, Tune-A-Video's
    video blocks too) with its residual adds in the output projections' epilogues."""
    from diffusers.models.attention import BasicTransformerBlock

    from .residual_adds import patch_residual_adds, unpatch_residual_adds

    if not record.options.get("residual_adds") or not _is_denoiser(model):
        return
    fused_layers = _patch_temporal_layer_residual_adds(model, record)
    _patch_each(model, record, "residual_adds", BasicTransformerBlock, patch_residual_adds, unpatch_residual_adds,
                ("transformer block residual adds", "in the output projections' epilogues", "blocks"),
                skip_under=fused_layers)


def _patch_temporal_layer_residual_adds(model: nn.Module, record: PatchRecord) -> tuple[str, ...]:
    """Turn on the residual adds of the motion modules' and Stable Video Diffusion's fused forwards
    (:func:`vidgen.integration.blocks.block_over_frames`, :func:`vidgen.integration.svd.temporal_block_over_frames`);
    returns the motion modules' paths, whose blocks their forward runs (no block forward of their own)."""
    from .motion import FusedMotionForward
    from .svd import FusedSpatioTemporalForward

    layers = [(path, module, "motion module residual adds", FusedMotionForward, "motion module", [path])
              for path, module in _motion_modules(model)]
    layers += [(path, module, "SVD temporal block residual adds", FusedSpatioTemporalForward, "SVD temporal blocks",
                [f"{path}.temporal_transformer_blocks.{i}" if path else f"temporal_transformer_blocks.{i}"
                 for i in range(len(module.temporal_transformer_blocks))]) for path, module in _spatio_temporal_models(model)]
    fused_motion_modules = []
    for path, module, what, fused_type, entry, wheres in layers:
        forward = module.__dict__.get("forward")
        if not isinstance(forward, fused_type):
            record.report.kept.append(PatchEntry(path, what, f"it runs diffusers' forward (see {entry})"))
            continue
        forward.residual_adds = True
        record.undo.append(lambda f=forward: setattr(f, "residual_adds", False))
        record.report.replaced += [PatchEntry(where, f"{what}: each attention's and feed-forward's add in its "
                                              "output projection's epilogue") for where in wheres]
        if fused_type is FusedMotionForward:
            fused_motion_modules.append(path)
    return tuple(fused_motion_modules)


def _patch_each(model: nn.Module, record: PatchRecord, option: str, module_type: type, patch_one, unpatch_one,
                words: tuple[str, str, str], skip_under: tuple[str, ...] = ()) -> None:
    """The opt-in instance-level fusions: when ``option`` is on, ``patch_one`` on every ``module_type``
    of the denoiser (Stable Video Diffusion's too), each reported as replaced or, where ``patch_one``
    refuses it (ValueError: its unsupported reason), kept. ``words``: what the report calls one, what
    the replacement does, what the summary counts. ``skip_under``: paths of modules whose own fused
    forward already covers the ``module_type`` instances inside them (left as they are, unreported)."""
    if not record.options.get(option) or not _is_denoiser(model):
        return
    what, how, counted = words
    patched = 0
    for path, module in model.named_modules():
        if not isinstance(module, module_type) or any(path.startswith(f"{p}.") for p in skip_under):
            continue
        try:
            patch_one(module)
        except ValueError as unsupported:
            record.report.kept.append(PatchEntry(path, what, str(unsupported)))
            continue
        record.undo.append(lambda m=module: unpatch_one(m))
        record.report.replaced.append(PatchEntry(path, f"{what}: {how}"))
        patched += 1
    if patched:
        record.summary.append(f"{option} ({patched} {counted})")


def _shard_denoiser(model: nn.Module, record: PatchRecord) -> None:
    """frame_parallel: the denoiser's forward runs on this rank's frames and returns the whole prediction."""
    from diffusers import (LatteTransformer3DModel, UNet3DConditionModel, UNetMotionModel,
                           UNetSpatioTemporalConditionModel)

    from .frame_parallel import VideoArgument

    parallel = record.options.get("frame_parallel")
    svd = isinstance(model, UNetSpatioTemporalConditionModel)
    latte = isinstance(model, LatteTransformer3DModel)
    if not parallel or not (latte or _is_denoiser(model)):
        return
    video = VideoArgument("sample", frame_dim=2)
    if svd:
        _shard_svd_unet(model, record)
        video = VideoArgument("sample", frame_dim=1)  # SVD's sample is (B, F, C, h, w)
    elif latte:
        from .latte import FusedLatteForward

        if not isinstance(model.__dict__.get("forward"), FusedLatteForward):  # diffusers' would see one shard
            why = [e.why for e in record.report.kept if e.what == "Latte temporal blocks"]
            raise ValueError("frame_parallel: needs Latte's forward on vidgen's, which exchanges the frames between "
                             f"ranks; left on diffusers' path: {'; '.join(why) or 'a forward vidgen did not install'}")
        video = VideoArgument("hidden_states", frame_dim=2)
    elif isinstance(model, VideoUNet):
        off = [role for role, on in model.vidgen_ops.items() if not on]
        if off:  # the reference processors would attend over this rank's frames only
            raise ValueError(f"frame_parallel: needs the VideoUNet's attn1 and attn_temp on vidgen's processors, "
                             f"which exchange frames between ranks; {' and '.join(off)}=False")
    elif isinstance(model, UNet3DConditionModel):
        _shard_temporal_convolutions(model, record)
    elif not isinstance(model, UNetMotionModel):
        raise ValueError(f"frame_parallel: supports AnimateDiff's UNetMotionModel, UNet3DConditionModel, Stable "
                         f"Video Diffusion's UNetSpatioTemporalConditionModel, Tune-A-Video's VideoUNet and "
                         f"LatteTransformer3DModel; {type(model).__name__} is not frame-parallel (its other "
                         "frame-mixing layers do not communicate)")
    left = [f"{e.where} ({e.why})" for e in record.report.kept if e.what == "motion module"]
    if left:
        raise ValueError("frame_parallel: needs every motion module on vidgen's forward, which exchanges the "
                         f"frames between ranks; left on diffusers' path: {'; '.join(left)}")
    previous = model.__dict__.get("forward")
    model.forward = parallel.denoiser_forward(model, model.forward, video)
    record.undo.append(lambda: model.__dict__.update(forward=previous) if previous is not None
                       else model.__dict__.pop("forward", None))
    record.summary.append("frame_parallel")
    record.report.replaced.append(PatchEntry("", f"forward on this rank's frames ({parallel!r})"))


def _shard_temporal_convolutions(model: nn.Module, record: PatchRecord) -> None:
    from diffusers.models.resnet import TemporalConvLayer

    from .frame_parallel import ShardedTemporalConv

    _install_sharded_forwards(model, record, TemporalConvLayer, ShardedTemporalConv,
                              "temporal convolution with a one-frame halo (frame-parallel)")


def _shard_svd_unet(model: nn.Module, record: PatchRecord) -> None:
    """Stable Video Diffusion's frame-mixing layers on a shard: its TransformerSpatioTemporalModels must run
    vidgen's forward (which exchanges the frames), its temporal ResNets get halos and pooled norms."""
    from diffusers.models.resnet import TemporalResnetBlock

    from .frame_parallel import ShardedTemporalResnet

    left = [f"{e.where} ({e.why})" for e in record.report.kept if e.what == "SVD temporal blocks"]
    if left:
        raise ValueError("frame_parallel: needs every TransformerSpatioTemporalModel on vidgen's forward, which "
                         f"exchanges the frames between ranks; left on diffusers' path: {'; '.join(left)}")
    _install_sharded_forwards(model, record, TemporalResnetBlock, ShardedTemporalResnet,
                              "temporal ResNet block with pooled GroupNorms and one-frame halos (frame-parallel)")


def _install_sharded_forwards(model: nn.Module, record: PatchRecord, module_type: type, forward_type: type,
                              what: str) -> None:
    """Every ``module_type`` inside ``model`` gets a ``forward_type`` instance forward (all checked first:
    one it cannot serve refuses the patch, naming its path)."""
    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, module_type)]
    for path, layer in layers:
        reason = forward_type.unsupported_reason(layer)
        if reason is not None:
            raise ValueError(f"frame_parallel: {path}: {reason}")
    for path, layer in layers:
        layer.forward = forward_type(layer)
        record.undo.append(lambda m=layer: m.__dict__.pop("forward", None))
        record.report.replaced.append(PatchEntry(path, what))


def _report_video_unet(model: VideoUNet, report: PatchReport) -> None:
    ops = model.vidgen_ops
    for role, what, instead in (
            ("frame_attention", "attn1: vidgen frame-attention kernel", "reference PyTorch attention"),
            ("temporal_attention", "attn_temp: vidgen temporal-attention kernel", "reference PyTorch attention"),
            ("group_norm", "ResNet GroupNorm + SiLU over frames: vidgen fused kernel", "the reference's 5-D GroupNorm")):
        if ops[role]:
            report.replaced.append(PatchEntry("", what))
        else:
            why = (f"{role}=False" if role != "group_norm" else
                   "off (it is on whenever an attention role is; VideoUNet.use_vidgen_ops(group_norm=...))")
            report.kept.append(PatchEntry("", what.split(":")[0] + ": " + instead, why))


def _motion_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in model.named_modules()
            if isinstance(m, (AnimateDiffTransformer3D, TransformerTemporalModel))]


def _patch_motion_modules(model: nn.Module, record: PatchRecord, covered: set[int]) -> None:
    from .motion import patch_motion_module, unpatch_motion_module

    motion_modules = _motion_modules(model)
    patched = 0
    for path, module in motion_modules:
        covered.update(id(m) for m in module.modules())
        try:
            patch_motion_module(module)
        except ValueError as unsupported:  # motion_module_unsupported_reason's answer, asked once
            record.report.kept.append(PatchEntry(path, "motion module", str(unsupported)))
            continue
        record.undo.append(lambda m=module: unpatch_motion_module(m))
        _mark(module, "vidgen: copy-free temporal attention", record)
        record.report.replaced.append(PatchEntry(path, "copy-free temporal attention (motion module"
                                                       + _free_noise_note(module) + ")"))
        patched += 1
    if patched:
        record.summary.append(f"temporal_attention ({patched} motion modules)")


def _free_noise_note(module: nn.Module) -> str:
    """How FreeNoise and split inference, as enabled now, shape a motion module's blocks (for its report entry)."""
    from .free_noise import is_free_noise_block, split_size_of, unwrap_split

    blocks = list(module.transformer_blocks)
    note = ""
    free_noise = [unwrap_split(b) for b in blocks if is_free_noise_block(unwrap_split(b))]
    if free_noise:
        b = free_noise[0]
        note += (f"; FreeNoise windows of {b.context_length} frames, stride {b.context_stride}, "
                 f"{b.weighting_scheme} weights, each a frame-offset view")
    sizes = {split_size_of(b) for b in blocks} - {None}
    if sizes:
        note += f"; split inference over {min(sizes)} positions at a time"
    return note


def _latte_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers import LatteTransformer3DModel

    return [(path, m) for path, m in model.named_modules() if isinstance(m, LatteTransformer3DModel)]


def _patch_latte(model: nn.Module, record: PatchRecord, covered: set[int]) -> None:
    from .latte import patch_latte, unpatch_latte

    for path, latte in _latte_models(model):
        temporal = latte.temporal_transformer_blocks
        covered.update(id(m) for block in temporal for m in block.modules())
        try:
            patch_latte(latte)
        except ValueError as unsupported:  # latte_unsupported_reason's answer
            record.report.kept.append(PatchEntry(path, "Latte temporal blocks", str(unsupported)))
            continue
        record.undo.append(lambda m=latte: unpatch_latte(m))
        _mark(latte, "vidgen: copy-free temporal attention (Latte)", record)
        prefix = f"{path}." if path else ""
        record.report.replaced.append(PatchEntry(path, "forward on the image layout (no (b f) n c <-> (b n) f c "
                                                       "copies around the temporal blocks)"))
        record.report.replaced += [PatchEntry(f"{prefix}temporal_transformer_blocks.{i}",
                                              "copy-free temporal attention (Latte temporal block)")
                                   for i in range(len(temporal))]
        record.summary.append(f"temporal_attention (Latte, {len(temporal)} temporal blocks)")


def _spatio_temporal_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    return [(path, m) for path, m in model.named_modules() if isinstance(m, TransformerSpatioTemporalModel)]


def _patch_spatio_temporal(model: nn.Module, record: PatchRecord, covered: set[int]) -> None:
    """Stable Video Diffusion's TransformerSpatioTemporalModels: their temporal blocks copy-free."""
    from .blocks import REPRODUCED_PROCESSORS
    from .processors import SingleTokenCrossAttnProcessor
    from .svd import cross_attentions, patch_spatio_temporal, unpatch_spatio_temporal

    patched = 0
    for path, module in _spatio_temporal_models(model):
        covered.update(id(m) for block in module.temporal_transformer_blocks for m in block.modules())
        prefix = f"{path}." if path else ""
        for where, attn in cross_attentions(module) if record.options.get("cross_attention", True) else ():
            # SVD's image-embedding context: one token
            if type(attn.processor).__name__ not in REPRODUCED_PROCESSORS:
                continue  # a processor of its own (IP-Adapter, a user's) keeps its math; reported as it is
            covered.add(id(attn))
            original = attn.processor
            attn.set_processor(SingleTokenCrossAttnProcessor(original))
            record.undo.append(lambda a=attn, p=original: a.set_processor(p))
            record.report.replaced.append(PatchEntry(prefix + where, "single-token cross-attention: the context's "
                                                     "value projection, no scores (other contexts: diffusers' processor)"))
        try:
            patch_spatio_temporal(module)
        except ValueError as unsupported:  # spatio_temporal_unsupported_reason's answer
            record.report.kept.append(PatchEntry(path, "SVD temporal blocks", str(unsupported)))
            continue
        record.undo.append(lambda m=module: unpatch_spatio_temporal(m))
        _mark(module, "vidgen: copy-free temporal attention (SVD)", record)
        record.report.replaced += [
            PatchEntry(f"{prefix}temporal_transformer_blocks.{i}", "copy-free temporal attention (SVD temporal block: "
                       "attention over frames on the image layout, cross-attention once per video)")
            for i in range(len(module.temporal_transformer_blocks))]
        patched += 1
    if patched:
        record.summary.append(f"temporal_attention ({patched} SVD spatio-temporal transformers)")


def _report_frame_convolutions(model: nn.Module, report: PatchReport) -> None:
    """SVD's convolutions over frames (temporal ResNet blocks in the UNet and the VAE's decoder,
    the decoder's final time convolution): no vidgen kernel, PyTorch's Conv3d runs them."""
    from diffusers.models.resnet import TemporalResnetBlock

    inside: set[int] = set()
    for path, module in model.named_modules():
        if isinstance(module, TemporalResnetBlock):
            inside.update(id(m) for m in module.modules())
            report.kept.append(PatchEntry(path, "temporal ResNet block (Conv3d over frames)",
                                          "a 3-frame convolution: PyTorch's Conv3d serves it"))
        elif isinstance(module, nn.Conv3d) and id(module) not in inside:
            report.kept.append(PatchEntry(path, "Conv3d over frames", "a convolution: PyTorch's Conv3d serves it"))


def _ip_adapter_processor(processor) -> bool:
    return type(processor).__name__.startswith("IPAdapter")


def _report_image_attention(model: nn.Module, report: PatchReport, covered: set[int]) -> None:
    """The attention layers no role took: image self-attention and text cross-attention."""
    for path, attn in model.named_modules():
        if not isinstance(attn, Attention) or id(attn) in covered:
            continue
        if _ip_adapter_processor(attn.processor):
            report.kept.append(PatchEntry(path, "text and image cross-attention (IP-Adapter)",
                                          "per-frame cross-attention, no video role: diffusers' IP-Adapter "
                                          "processor serves it"))
        elif attn.is_cross_attention:
            report.kept.append(PatchEntry(path, "text cross-attention", "no video role: PyTorch SDPA serves it"))
        else:
            report.kept.append(PatchEntry(path, "image self-attention", "per-frame attention, no video role: "
                                                                        "PyTorch SDPA serves it"))
    projection = getattr(model, "encoder_hid_proj", None)
    if type(projection).__name__ == "MultiIPAdapterImageProjection":
        report.kept.append(PatchEntry("encoder_hid_proj", "IP-Adapter image projection",
                                      "once per image embedding and call, no video role"))


# -- Text2Video-Zero ----------------------------------------------------------------------------
def _cross_frame_types() -> tuple[type, ...]:
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as t2v
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero_sdxl as t2v_xl

    return (t2v.CrossFrameAttnProcessor, t2v.CrossFrameAttnProcessor2_0,
            t2v_xl.CrossFrameAttnProcessor, t2v_xl.CrossFrameAttnProcessor2_0)


def _self_attention_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, Attention) and not m.is_cross_attention]


def _swap_cross_frame_processors(model: nn.Module, precision: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Replace every cross-frame processor on a self-attention module whose head dim the kernel
    serves; returns the paths swapped and the (path, reason) of those left as they are."""
    kinds = _cross_frame_types()
    swapped, left = [], []
    for path, attn in _self_attention_modules(model):
        if isinstance(attn.processor, kinds):
            reason = frame_attention_unsupported_reason(head_dim_of(attn))
            if reason is not None:  # diffusers' processor keeps running here, exactly as unpatched
                left.append((path, reason))
                continue
            attn.set_processor(FirstFrameAttnProcessor(attn.processor, precision))
            _mark(attn, "vidgen: first-frame attention (Text2Video-Zero)", None)
            swapped.append(path)
        elif not isinstance(attn.processor, FirstFrameAttnProcessor):
            _unmark(attn)  # another processor was installed since: the note goes with ours
    return swapped, left


def _restore_cross_frame_processors(model: nn.Module) -> None:
    for _, attn in _self_attention_modules(model):
        if isinstance(attn.processor, FirstFrameAttnProcessor):
            attn.set_processor(attn.processor.original)
            _unmark(attn)


def _patch_cross_frame_attention(model: nn.Module, record: PatchRecord, covered: set[int]) -> None:
    report = record.report
    precision = record.options.get("attention_precision", "auto")
    swapped, left = _swap_cross_frame_processors(model, precision)
    record.undo.append(lambda: _restore_cross_frame_processors(model))
    modules = dict(model.named_modules())
    for path in swapped:
        covered.add(id(modules[path]))
        report.replaced.append(PatchEntry(path, "first-frame attention kernel (Text2Video-Zero)"))
    for path, reason in left:
        covered.add(id(modules[path]))
        report.kept.append(PatchEntry(path, "Text2Video-Zero cross-frame attention", reason))
    if swapped:
        record.summary.append(f"frame_attention ({len(swapped)} Text2Video-Zero cross-frame processors)")
    # Text2Video-Zero's pipeline installs its processors inside __call__ via set_attn_processor:
    # translate them as they arrive (an instance attribute; the class method is untouched).
    if isinstance(model, UNet2DConditionModel) and "set_attn_processor" not in model.__dict__:
        def set_attn_processor(self, processor, **kwargs):
            type(self).set_attn_processor(self, processor, **kwargs)
            _swap_cross_frame_processors(self, precision)

        model.set_attn_processor = types.MethodType(set_attn_processor, model)
        record.undo.append(lambda: model.__dict__.pop("set_attn_processor", None))
        # Modules whose head dim the kernel does not serve will keep diffusers' processor then.
        served = [path for path, attn in _self_attention_modules(model) if id(attn) not in covered
                  and frame_attention_unsupported_reason(head_dim_of(attn)) is None]
        if served:
            report.replaced.append(PatchEntry(
                "set_attn_processor", f"Text2Video-Zero cross-frame processors installed later run the first-frame "
                                      f"kernel ({len(served)} self-attention modules can take them)"))
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
