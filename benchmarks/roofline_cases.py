"""The denoising steps the roofline model records (``python -m benchmarks.roofline``): full-size
architectures built on the meta device (no weights, no memory), each step run the way its users
run it, diffusers' way ("eager") and with ``vidgen.patch`` ("patched").

Cases (the settings of ``benchmarks/bench_e2e.py`` and ``benchmarks/profile_step.py``; fp16):

* AnimateDiff: SD1.5 + a MotionAdapter (``vidgen.default_model.motion_adapter``), 16 frames,
  512x512, CFG 7.5, DDIM: diffusers' pipeline loop against the same loop on ``vidgen.patch(pipe)``
  (copy-free motion modules, fused DDIM step).
* Tune-A-Video, 8 and 24 frames, 512x512, CFG 12.5: the inflated SD1.5 ``VideoUNet`` in its
  reference formulation (gathered K/V on SDPA, permute copies) in diffusers' loop, against
  vidgen's kernels and ``vidgen.sampling.denoise`` (CFG and DDIM in one fused step).
* Stable Video Diffusion, 14 and 25 frames, 576x1024: diffusers' ``UNetSpatioTemporalConditionModel``
  with SVD's configuration (its defaults), the pipeline's loop (image latents concatenated on the
  channels, per-frame guidance 1..3, Euler). vidgen has no SVD patch yet: ``vidgen.patch`` leaves
  it as it is, so its patched step is its eager step (the model says so, from ``patch_report``).
* Video Adapter: an SD1.5-size prior + the small video model of ``bench_e2e.SMALL_ADAPTER_UNET``,
  8 frames, 512x512, guidance 2.5, prior strength 0.1: three forwards and eager arithmetic (bench_e2e's
  plain diffusers side) against ``denoise(prior=...)`` (one batched small forward, one prior forward,
  one fused step).
* Text2Video-Zero, 8 frames, 512x512, CFG 7.5: SD1.5 with diffusers' ``CrossFrameAttnProcessor2_0``
  (every frame attends to frame 0, gathered K/V), the all-frames loop of its pipeline, against the
  patched pipeline (first-frame kernel, fused DDIM step).

``TINY`` runs the same cases on the built-in tiny model's sizes (and a tiny SVD), 3 frames, 16x16
latents: the plumbing, for the tests.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch

from benchmarks.bench_e2e import SMALL_ADAPTER_UNET
from benchmarks.roofline_trace import StepGraph, record_step

META = torch.device("meta")
EAGER, PATCHED = "eager", "patched"
STEPS = 25  # the schedule's length: a step's work does not depend on it (two steps are run)
TEXT_TOKENS = 77

# diffusers' dummy SVD UNet of its pipeline tests, for the tiny scale.
_TINY_SVD = dict(block_out_channels=(32, 64), layers_per_block=2, in_channels=8, out_channels=4,
                 down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                 up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                 cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
                 addition_time_embed_dim=32)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of every case: the SD-layout UNet, the SVD UNet, latent sizes and frame counts."""

    name: str
    arch: str                     # vidgen.default_model architecture of the SD1.5-layout models
    svd: dict                     # UNetSpatioTemporalConditionModel settings beyond its defaults
    latent: int                   # latent side of the 512x512 cases
    svd_latent: tuple[int, int]   # latent (h, w) of the SVD cases
    frames: dict[str, tuple[int, ...]]
    dtype: torch.dtype = torch.float16


FULL = Scale("full", "sd15", {}, 64, (72, 128),
             {"animatediff": (16,), "tune-a-video": (8, 24), "svd": (14, 25), "video-adapter": (8,),
              "text2video-zero": (8,)})
TINY = Scale("tiny", "tiny", _TINY_SVD, 16, (8, 16),
             {"animatediff": (3,), "tune-a-video": (3,), "svd": (3,), "video-adapter": (3,), "text2video-zero": (3,)})
CASES = ("animatediff", "tune-a-video", "svd", "video-adapter", "text2video-zero")
LABELS = {"animatediff": "AnimateDiff", "tune-a-video": "Tune-A-Video", "svd": "Stable Video Diffusion",
          "video-adapter": "Video Adapter", "text2video-zero": "Text2Video-Zero"}
# Speedup goals of the patched step over the eager one (issue 16).
GOALS = {"animatediff": 1.4, "tune-a-video": 2.0}


@dataclasses.dataclass
class Recorded:
    """One case at one frame count: both steps and what vidgen's patch did."""

    case: str
    frames: int
    label: str
    eager: StepGraph
    patched: StepGraph
    patch_note: str | None  # set when vidgen left the model as it was (patched is eager)

    @property
    def name(self) -> str:
        return f"{self.case}-{self.frames}"


# ----------------------------------------------------------------------------------------------
# Loops
# ----------------------------------------------------------------------------------------------
def diffusers_loop(unet, scheduler, steps: int, latents: torch.Tensor, embeds: torch.Tensor, guidance, *,
                   image_latents: torch.Tensor | None = None, **unet_kwargs) -> torch.Tensor:
    """The denoising loop of diffusers' pipelines (AnimateDiff, Text2Video-Zero, Stable Video
    Diffusion; Tune-A-Video's is the same): CFG as one batched [uncond; cond] forward, the guidance
    arithmetic in eager PyTorch, then ``scheduler.step``."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        if image_latents is not None:
            model_input = torch.cat([model_input, image_latents], dim=2)
        noise_pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False, **unet_kwargs)[0]
        uncond, cond = noise_pred.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


def adapter_plain_loop(small, prior, scheduler, steps: int, latents, cond, uncond, guidance: float, strength: float):
    """Video Adapter as plain diffusers code (``bench_e2e``'s plain side): three forwards per step."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps_u = small(latents, t, uncond).sample
        eps_c = small(latents, t, cond).sample
        eps_p = prior(latents, t, cond).sample
        latents = scheduler.step(eps_u + guidance * (eps_c + strength * eps_p - eps_u), t, latents).prev_sample
    return latents


def _ddim(**overrides):
    from diffusers import DDIMScheduler

    from vidgen.default_model import SD15_SCHEDULER

    return DDIMScheduler(**{**SD15_SCHEDULER, **overrides})


def _empty(*shape, dtype=torch.float16) -> torch.Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


def _patch(pipe_or_model) -> str | None:
    """``vidgen.patch`` it, the opt-in fusions included (the GEGLU feed-forward, ``feed_forward=True``, and
    the transformer blocks' residual adds, ``residual_adds=True``: off by default until a GPU has timed
    them); None when something was replaced, else why the patched step is the eager one."""
    import vidgen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nothing was patched": reported below instead
        vidgen.patch(pipe_or_model, feed_forward=True, residual_adds=True)
    report = vidgen.patch_report(pipe_or_model)
    if report.patched:
        return None
    return (f"vidgen has no patch for {type(pipe_or_model).__name__} yet (patch_report: nothing replaced): "
            "its patched step is its eager step until one lands")


# ----------------------------------------------------------------------------------------------
# Models on the meta device
# ----------------------------------------------------------------------------------------------
class Models:
    """Models of one scale, built once on the meta device and shared by the cases that use them."""

    def __init__(self, scale: Scale):
        from vidgen.default_model import unet_config

        self.scale = scale
        self.sd_config = unet_config(scale.arch)
        self._built: dict[str, object] = {}

    def _once(self, key: str, build: Callable[[], object]):
        if key not in self._built:
            with torch.device(META):
                self._built[key] = build().eval()  # as a pipeline holds its models
        return self._built[key]

    @staticmethod
    def _on_meta(model):
        # Some diffusers layers build parameters with the legacy torch.Tensor([...]), which ignores the
        # default device (SVD's AlphaBlender): everything goes to the meta device, in the scale's dtype.
        return model.to(META)

    def _new_unet2d(self):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**self.sd_config).to(self.scale.dtype)

    def video_unet(self):
        from vidgen import VideoUNet

        return self._once("video_unet", lambda: VideoUNet(**self.sd_config).to(self.scale.dtype))

    def small_video_unet(self):
        from vidgen import VideoUNet

        config = dict(self.sd_config) if self.scale.arch == "tiny" else {
            "sample_size": self.sd_config["sample_size"], "cross_attention_dim": self.sd_config["cross_attention_dim"],
            **SMALL_ADAPTER_UNET}
        return self._once("small_video_unet", lambda: VideoUNet(**config).to(self.scale.dtype))

    def motion_unet(self):
        from diffusers import UNetMotionModel

        from vidgen.default_model import motion_adapter

        def build():
            adapter = motion_adapter(self.sd_config, self.scale.dtype)
            return UNetMotionModel.from_unet2d(self._new_unet2d(), adapter).to(self.scale.dtype)
        return self._once("motion_unet", build)

    def svd_unet(self):
        from diffusers import UNetSpatioTemporalConditionModel

        return self._once("svd_unet", lambda: self._on_meta(
            UNetSpatioTemporalConditionModel(**self.scale.svd).to(self.scale.dtype)))

    def text(self, videos: int) -> torch.Tensor:
        return _empty(videos, TEXT_TOKENS, self.sd_config["cross_attention_dim"], dtype=self.scale.dtype)


# ----------------------------------------------------------------------------------------------
# Cases: each returns (eager graph, patched graph, note)
# ----------------------------------------------------------------------------------------------
def _animatediff(models: Models, frames: int):
    from diffusers import AnimateDiffPipeline

    import vidgen

    # the adapter's weights live in the motion UNet; the pipeline's own copy of it runs nothing
    pipe = AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=models.motion_unet(),
                               motion_adapter=None, scheduler=_ddim(beta_schedule="linear"))
    size, dtype = models.scale.latent, models.scale.dtype
    latents = _empty(1, 4, frames, size, size, dtype=dtype)
    text = models.text(2 * frames)  # the pipeline repeats [uncond; cond] per frame

    def run():
        return diffusers_loop(pipe.unet, pipe.scheduler, STEPS, latents, text, 7.5)

    eager = record_step(run, pipe.unet, [pipe.unet])
    note = _patch(pipe)
    try:
        patched = eager if note else record_step(run, pipe.unet, [pipe.unet])
    finally:
        vidgen.unpatch(pipe)
    return eager, patched, note


def _tune_a_video(models: Models, frames: int):
    from vidgen.sampling import denoise

    import vidgen

    unet = models.video_unet()
    size, dtype = models.scale.latent, models.scale.dtype
    latents = _empty(1, 4, frames, size, size, dtype=dtype)
    cond = models.text(1)
    unet.use_vidgen_ops(False, False)
    eager = record_step(lambda: diffusers_loop(unet, _ddim(), STEPS, latents, torch.cat([cond, cond]), 12.5), unet, [unet])
    _patch(unet)  # vidgen's attention and GroupNorm (use_vidgen_ops) and the fused feed-forward
    try:
        patched = record_step(lambda: denoise(unet, latents, cond, cond, scheduler=_ddim(), num_inference_steps=STEPS,
                                              guidance_scale=12.5, progress=False), unet, [unet])
    finally:
        vidgen.unpatch(unet)
    return eager, patched, None


def _svd(models: Models, frames: int):
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    import vidgen

    unet = models.svd_unet()
    # SVD's scheduler configuration (v-prediction, Karras sigmas, continuous timesteps)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                                       sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
                                       steps_offset=1)
    pipe = StableVideoDiffusionPipeline(vae=None, image_encoder=None, unet=unet, scheduler=scheduler,
                                        feature_extractor=None)
    (h, w), dtype = models.scale.svd_latent, models.scale.dtype
    latents = _empty(1, frames, 4, h, w, dtype=dtype)
    image_latents = _empty(2, frames, 4, h, w, dtype=dtype)
    embeds = _empty(2, 1, unet.config.cross_attention_dim, dtype=dtype)
    time_ids = _empty(2, 3, dtype=dtype)
    guidance = _empty(1, frames, 1, 1, 1, dtype=dtype)  # linspace(1, 3) per frame

    def run():
        return diffusers_loop(pipe.unet, pipe.scheduler, STEPS, latents, embeds, guidance, image_latents=image_latents,
                              added_time_ids=time_ids)

    eager = record_step(run, unet, [unet])
    note = _patch(pipe)
    patched = eager if note else record_step(run, unet, [unet])
    vidgen.unpatch(pipe)  # the meta UNet is shared with the next frame count's case, which starts eager
    return eager, patched, note


def _video_adapter(models: Models, frames: int):
    from vidgen.sampling import denoise

    import vidgen

    prior, small = models.video_unet(), models.small_video_unet()
    size, dtype = models.scale.latent, models.scale.dtype
    latents = _empty(1, 4, frames, size, size, dtype=dtype)
    cond = uncond = models.text(1)
    for unet in (prior, small):
        unet.use_vidgen_ops(False, False)
    eager = record_step(lambda: adapter_plain_loop(small, prior, _ddim(), STEPS, latents, cond, uncond, 2.5, 0.1),
                        small, [small, prior], calls_per_step=2)
    for unet in (prior, small):
        _patch(unet)
    try:
        patched = record_step(lambda: denoise(small, latents, cond, uncond, scheduler=_ddim(),
                                              num_inference_steps=STEPS, guidance_scale=2.5, prior=prior,
                                              prior_strength=0.1, progress=False), small, [small, prior])
    finally:
        for unet in (prior, small):
            vidgen.unpatch(unet)
    return eager, patched, None


def _text2video_zero(models: Models, frames: int):
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0, TextToVideoZeroPipeline)

    unet = models._once("t2v_zero_unet", models._new_unet2d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipeline's deprecation notice
        pipe = TextToVideoZeroPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=_ddim(),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    size, dtype = models.scale.latent, models.scale.dtype
    latents = _empty(frames, 4, size, size, dtype=dtype)  # the frames are the batch
    text = models.text(2 * frames)

    def run():
        # what the pipeline's __call__ installs before its loops (CFG: batch_size=2)
        pipe.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
        return diffusers_loop(pipe.unet, pipe.scheduler, STEPS, latents, text, 7.5)

    eager = record_step(run, unet, [unet])
    note = _patch(pipe)
    return eager, (eager if note else record_step(run, unet, [unet])), note


_BUILDERS = {"animatediff": _animatediff, "tune-a-video": _tune_a_video, "svd": _svd,
             "video-adapter": _video_adapter, "text2video-zero": _text2video_zero}


def _label(case: str, frames: int, scale: Scale) -> str:
    if case == "svd":
        h, w = scale.svd_latent
        return f"{LABELS[case]}, {frames} frames, {8 * h}x{8 * w}"
    side = 8 * scale.latent
    return f"{LABELS[case]}, {frames} frames, {side}x{side}"


def record_cases(scale: Scale = FULL, cases: tuple[str, ...] = CASES,
                 progress: Callable[[str], None] = lambda _: None) -> list[Recorded]:
    """Both steps of every case at every frame count of ``scale``."""
    unknown = set(cases) - set(_BUILDERS)
    if unknown:
        raise ValueError(f"cases: unknown {sorted(unknown)}; expected some of {', '.join(CASES)}")
    models = Models(scale)
    recorded = []
    for case in cases:
        for frames in scale.frames[case]:
            progress(f"{case} F={frames}")
            eager, patched, note = _BUILDERS[case](models, frames)
            recorded.append(Recorded(case, frames, _label(case, frames, scale), eager, patched, note))
    return recorded
