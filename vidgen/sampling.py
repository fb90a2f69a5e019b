"""Low-latency video samplers on vidgen's fused ops (METHODS.md sections 4-6).

* :func:`invert`: DDIM inversion of clean video latents (Tune-A-Video: the empty prompt's
  conditional prediction, no guidance), ending at the sampling start x_T.
* :func:`denoise`: guided DDIM sampling, each step one fused kernel
  (:meth:`vidgen.integration.schedulers.FusedDDIMScheduler.guided_step`): classifier-free guidance, and the
  Video Adapter composition when a prior UNet is given (section 4)::

      eps_text = eps_s(x, t | c) + lam * eps_p(x, t | c)
      eps      = eps_s(x, t | u) + w * (eps_text - eps_s(x, t | u))

  The guided UNet's conditional and unconditional passes run as one batch of 2B videos.
* :func:`sample_video`: the whole Tune-A-Video / LAMP / Video Adapter path from a prompt, with
  per-stage timing (text encoding, inversion, denoising, decoding).

Any video UNet that takes ``(sample (B, C, F, h, w), timestep, encoder_hidden_states (B, L, C))``
and returns ``.sample`` of the sample's shape works: :class:`~vidgen.VideoUNet`, diffusers'
``UNet3DConditionModel``, and ``UNetMotionModel`` (its text is repeated per frame, as its pipelines do).

Latents live frame-major in memory, ``(B, F, C, h, w)``, shown to the UNets as the
``(B, C, F, h, w)`` view they take: the frame fold of a video UNet is then free, and every step
works on contiguous tensors. The loops never read a device value on the host: timesteps and
cumulative alphas are device tensors.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .integration.graphs import CudaGraphs
from .vocabulary import closed_vocabulary, vocabulary_problem
from .integration.schedulers import FusedDDIMInverseScheduler, FusedDDIMScheduler
from .ops import correlated_noise


# ----------------------------------------------------------------------------------------------
# Components and timing
# ----------------------------------------------------------------------------------------------
# The video UNets a saved ``unet`` folder may hold, loaded as they are (a 2-D UNet is inflated).
VIDEO_UNET_CLASSES = ("VideoUNet", "UNetMotionModel")


def saved_unet_class(folder: str | os.PathLike) -> str | None:
    """The ``_class_name`` of the model saved in ``folder`` (its ``config.json``), read without loading it."""
    import json

    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f).get("_class_name")


def load_video_unet(folder: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A saved video UNet: a :class:`~vidgen.VideoUNet` (Tune-A-Video's inflation, tuned or not) or a
    diffusers ``UNetMotionModel`` (AnimateDiff's UNet with its motion modules)."""
    from diffusers import UNetMotionModel

    from .integration.video_unet import VideoUNet

    saved = saved_unet_class(folder)
    if saved not in VIDEO_UNET_CLASSES:
        raise ValueError(f"unet: {folder} holds a {saved}, expected one of {', '.join(VIDEO_UNET_CLASSES)}")
    return (VideoUNet if saved == "VideoUNet" else UNetMotionModel).from_pretrained(folder, torch_dtype=torch_dtype)


@dataclass
class VideoModel:
    """What the samplers need: a video UNet and the image model's VAE, text encoder, tokenizer,
    and scheduler configuration (any diffusers scheduler; its config is used for DDIM)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, frame_mode: str = "sparse_causal",
                        unet: torch.nn.Module | None = None, torch_dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "VideoModel":
        """Load a local Stable-Diffusion-layout folder. The ``unet`` subfolder may hold a 2-D UNet
        (inflated with ``frame_mode``), a saved :class:`~vidgen.VideoUNet` or a saved diffusers
        ``UNetMotionModel`` (AnimateDiff's UNet with its motion modules); pass ``unet`` to use
        another video UNet."""
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        from .integration.video_unet import VideoUNet

        path = os.fspath(path)
        missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
                   if not os.path.isdir(os.path.join(path, sub))]
        if missing:
            raise FileNotFoundError(f"model: {path} is not a diffusers Stable Diffusion folder (missing {', '.join(missing)})")
        if unet is None:
            if saved_unet_class(os.path.join(path, "unet")) in VIDEO_UNET_CLASSES:
                unet = load_video_unet(os.path.join(path, "unet"), torch_dtype=torch_dtype)
            else:
                unet = VideoUNet.from_pretrained_2d(path, frame_mode=frame_mode, torch_dtype=torch_dtype)
        model = cls(
            unet=unet,
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=torch_dtype),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(path, subfolder="scheduler"),
        )
        return model.to(device)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VideoModel":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


@dataclass
class StageTimes:
    """Wall-clock seconds per stage; the device is synchronised at stage boundaries only."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        rows = [f"{'stage':<16}{'seconds':>10}{'ms/step':>10}"]
        for stage, sec in self.seconds.items():
            per_step = f"{1000 * sec / self.steps[stage]:.1f}" if self.steps.get(stage) else ""
            rows.append(f"{stage:<16}{sec:>10.3f}{per_step:>10}")
        rows.append(f"{'total':<16}{sum(self.seconds.values()):>10.3f}")
        return "\n".join(rows)


class _Stage:
    def __init__(self, times: StageTimes | None, name: str, device: torch.device, steps: int | None = None):
        self.times, self.name, self.device, self.steps = times, name, device, steps

    def __enter__(self):
        _synchronize(self.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        _synchronize(self.device)
        if self.times is not None and exc[0] is None:
            self.times.seconds[self.name] = self.times.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
            if self.steps:
                self.times.steps[self.name] = self.times.steps.get(self.name, 0) + self.steps
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # free the stage's activations before the next stage allocates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_prompt(model: VideoModel, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings ``(len(prompts), L, C)`` (padded to the tokenizer's max length).

    A model whose tokenizer declares a closed vocabulary refuses prompts with other words."""
    for prompt in prompts:
        problem = vocabulary_problem(closed_vocabulary(model.tokenizer), prompt)
        if problem:
            raise ValueError(problem)
    # A tokenizer saved without model_max_length reports a huge one: the encoder's positions bound it.
    length = min(model.tokenizer.model_max_length, model.text_encoder.config.max_position_embeddings)
    tokens = model.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return model.text_encoder(tokens.input_ids.to(model.device))[0].to(model.dtype)


@torch.no_grad()
def encode_video(model: VideoModel, frames: torch.Tensor) -> torch.Tensor:
    """VAE latents ``(B, C, F, h, w)`` (frame-major in memory) of frames ``(B, F, 3, H, W)`` in [-1, 1].

    Uses the posterior mean (deterministic), scaled by the VAE's ``scaling_factor``."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames: expected (B, F, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
    videos, count = frames.shape[:2]
    pixels = frames.flatten(0, 1).to(device=model.device, dtype=model.vae.dtype)
    latents = model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor
    return latents.unflatten(0, (videos, count)).to(model.dtype).transpose(1, 2)


@torch.no_grad()
def decode_latents(model: VideoModel, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Frames ``(B, F, 3, H, W)`` in [0, 1] (float32) from latents ``(B, C, F, h, w)``, ``chunk`` frames per VAE call."""
    videos, _, count = latents.shape[:3]
    per_frame = latents.transpose(1, 2).flatten(0, 1) / model.vae.config.scaling_factor
    decoded = torch.cat([model.vae.decode(part.to(model.vae.dtype)).sample for part in per_frame.split(chunk)])
    return (decoded.float() / 2 + 0.5).clamp(0, 1).unflatten(0, (videos, count))


def initial_noise(shape: tuple[int, int, int, int, int], *, kind: str = "iid", alpha: float | None = None,
                  seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T ``(B, C, F, h, w)`` from :func:`vidgen.ops.correlated_noise` (frames correlated as PYoCo),
    frame-major in memory."""
    videos, channels, frames, height, width = shape
    noise = correlated_noise((videos, frames, channels, height, width), kind=kind, alpha=alpha, frame_dim=1,
                             seed=seed, device=device, dtype=dtype)
    return noise.transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Loops
# ----------------------------------------------------------------------------------------------
def _frame_major(latents: torch.Tensor) -> torch.Tensor:
    """A (B, C, F, h, w) tensor whose memory is (B, F, C, h, w)-contiguous (copies only if it is not)."""
    return latents.transpose(1, 2).contiguous().transpose(1, 2)


def _predict(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction for videos ``x (B, C, F, h, w)`` and one text embedding per video."""
    from diffusers import UNetMotionModel

    if isinstance(unet, UNetMotionModel):  # diffusers' motion UNet takes its text per frame
        text = text.repeat_interleave(x.shape[2], dim=0)
    return unet(x, t, text).sample


def _run_steps(step, x: torch.Tensor, timesteps: torch.Tensor, *, desc: str, progress: bool,
               cuda_graph: bool) -> torch.Tensor:
    """``x = step(x, i, t)`` for every step i and its t of ``timesteps`` (a device tensor).

    With ``cuda_graph``, one step is captured once (after a warm-up step on a copy, which
    builds lazy tables and allocations) and replayed per timestep with ``x`` and ``t`` copied
    into its static inputs: no per-kernel launch cost, same arithmetic.
    """
    if not cuda_graph:
        for i in tqdm(range(len(timesteps)), desc=desc, disable=not progress):
            x = step(x, i, timesteps[i])
        return x
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph: CUDA-graph capture needs CUDA tensors, got latents on {x.device}")
    graphs = CudaGraphs()
    static_x, static_t = x.clone(), timesteps[0].clone()
    graphs.warm_up(lambda: step(static_x.clone(), 0, static_t), x.device)
    replay, static_out = graphs.capture(lambda: step(static_x, 0, static_t))
    for i in tqdm(range(len(timesteps)), desc=desc, disable=not progress):
        static_x.copy_(x)
        static_t.copy_(timesteps[i])
        replay()
        x = static_out
    return static_out.clone()


def _check_latents(latents: torch.Tensor, embeds: torch.Tensor, name: str) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents: expected (B, C, F, h, w), got {tuple(latents.shape)}")
    if embeds.dim() != 3 or embeds.shape[0] != latents.shape[0]:
        raise ValueError(f"{name}: expected ({latents.shape[0]}, L, C), one embedding per video, got {tuple(embeds.shape)}")


@torch.no_grad()
def invert(unet: torch.nn.Module, latents: torch.Tensor, embeds: torch.Tensor, *, scheduler,
           num_inference_steps: int = 50, progress: bool = True, cuda_graph: bool = False) -> torch.Tensor:
    """DDIM inversion of clean latents ``(B, C, F, h, w)`` to x_T, as Tune-A-Video does.

    Ascending timesteps; at each the UNet predicts with ``embeds`` (Tune-A-Video: the empty
    prompt, no guidance) and one fused inversion step moves to the noisier level. ``scheduler``
    is any DDIM-compatible scheduler whose config is used; ``cuda_graph`` replays one captured
    step (CUDA only). Returns x_T ``(B, C, F, h, w)``.
    """
    _check_latents(latents, embeds, "embeds")
    inverse = FusedDDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(num_inference_steps, device=latents.device)  # timesteps and alpha table: setup, not step 0

    def step(x: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        eps = _predict(unet, x, t, embeds)
        return inverse.guided_step(eps.transpose(1, 2), t, x.transpose(1, 2), return_dict=False,
                                   return_pred_original=False)[0].transpose(1, 2)

    return _run_steps(step, _frame_major(latents), inverse.timesteps, desc="inverting",
                      progress=progress, cuda_graph=cuda_graph)


@torch.no_grad()
def denoise(unet: torch.nn.Module, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None = None, *,
            scheduler, num_inference_steps: int = 50, guidance_scale: float = 7.5,
            prior: torch.nn.Module | None = None, prior_cond: torch.Tensor | None = None,
            prior_strength: float = 0.1, guidance_rescale: float = 0.0, first_frame: torch.Tensor | None = None,
            eta: float = 0.0, noise: str = "iid", noise_alpha: float | None = None, seed: int = 0,
            progress: bool = True, cuda_graph: bool = False) -> torch.Tensor:
    """Guided DDIM sampling from x_T ``latents (B, C, F, h, w)``; returns x_0, same shape.

    Args:
        unet: the guided UNet (Video Adapter: the small task model s).
        cond, uncond: text embeddings ``(B, L, C)``; ``uncond=None`` or ``guidance_scale == 1``
            samples without classifier-free guidance (one forward per step).
        scheduler: any DDIM-compatible scheduler whose config is used.
        prior, prior_cond, prior_strength: the Video Adapter prior p, its conditional embeddings
            (default ``cond``) and lambda; ``prior=None`` is plain CFG. The paper's "inverse"
            variant (roles of s and p swapped) is this call with the two UNets exchanged.
        guidance_rescale: phi of diffusers' ``rescale_noise_cfg`` (0: off).
        first_frame: LAMP's condition, clean latents ``(B, C, h, w)`` of frame 0: kept as frame 0
            throughout and never stepped.
        eta, noise, noise_alpha, seed: DDIM's eta; with eta > 0, step i adds
            ``correlated_noise(kind=noise, alpha=noise_alpha, seed=seed + i)`` (frames correlated).
        cuda_graph: capture one step as a CUDA graph and replay it (CUDA only; shapes are static).
    """
    if cuda_graph and eta > 0:
        raise ValueError("cuda_graph: eta > 0 draws new noise every step, which a captured step cannot; use eta=0")
    _check_latents(latents, cond, "cond")
    guided = uncond is not None and guidance_scale != 1.0
    if guided:
        _check_latents(latents, uncond, "uncond")
        both = torch.cat([uncond, cond])
    if prior is not None:
        prior_cond = cond if prior_cond is None else prior_cond
        _check_latents(latents, prior_cond, "prior_cond")
    sampler = FusedDDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(num_inference_steps, device=latents.device)  # timesteps and alpha table: setup, not step 0
    videos = latents.shape[0]
    x = _frame_major(latents)
    if first_frame is not None:
        if first_frame.shape != (videos, *latents.shape[1:2], *latents.shape[3:]):
            raise ValueError(f"first_frame: expected {(videos, latents.shape[1], *latents.shape[3:])}, got {tuple(first_frame.shape)}")
        x[:, :, 0] = first_frame

    def step(x: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        if guided:
            pair = torch.cat([x.transpose(1, 2)] * 2).transpose(1, 2)  # [uncond; cond] batch, still frame-major
            eps = _predict(unet, pair, t, both)
            eps_uncond, eps_cond = eps[:videos].transpose(1, 2), eps[videos:].transpose(1, 2)
        else:
            eps_uncond, eps_cond = None, _predict(unet, x, t, cond).transpose(1, 2)
        eps_prior = _predict(prior, x, t, prior_cond).transpose(1, 2) if prior is not None else None
        # eta > 0: this step's noise, correlated along frames (dim 1 of the frame-major layout).
        step_noise = None if eta == 0 else correlated_noise(
            x.transpose(1, 2).shape, kind=noise, alpha=noise_alpha, frame_dim=1, seed=seed + i, device=x.device,
            dtype=x.dtype)
        x_next = sampler.guided_step(eps_cond, t, x.transpose(1, 2), eps_uncond, eps_prior,
                                     guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                                     prior_strength=prior_strength if prior is not None else 0.0, eta=eta,
                                     variance_noise=step_noise, return_dict=False,
                                     return_pred_original=False)[0].transpose(1, 2)
        if first_frame is not None:
            x_next[:, :, 0] = first_frame
        return x_next

    return _run_steps(step, x, sampler.timesteps, desc="denoising", progress=progress,
                      cuda_graph=cuda_graph)


# ----------------------------------------------------------------------------------------------
# The whole path
# ----------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    video: torch.Tensor | None  # (B, F, 3, H, W) float in [0, 1], None with decode=False
    latents: torch.Tensor       # (B, C, F, h, w) x_0
    initial_latents: torch.Tensor  # (B, C, F, h, w) x_T (noise or the inversion of the source)
    times: StageTimes


def sample_video(model: VideoModel, prompt: str | list[str], *, num_frames: int = 8, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 12.5,
                 negative_prompt: str = "", noise: str = "iid", noise_alpha: float | None = None, seed: int = 0,
                 source_video: torch.Tensor | None = None, first_frame: torch.Tensor | None = None,
                 prior: torch.nn.Module | None = None, prior_strength: float = 0.1, guidance_rescale: float = 0.0,
                 eta: float = 0.0, decode: bool = True, cuda_graph: bool = False,
                 progress: bool = True) -> SampleResult:
    """Text-to-video with a video UNet: Tune-A-Video, LAMP and Video Adapter sampling.

    Args:
        model: a :class:`VideoModel`.
        prompt: one prompt, or one per video.
        num_frames, height, width: video size in pixels (default: the UNet's sample size x VAE factor).
        guidance_scale: w of classifier-free guidance (Tune-A-Video: 12.5).
        noise, noise_alpha, seed: x_T from :func:`vidgen.ops.correlated_noise` (``"iid"``,
            ``"mixed"``, ``"progressive"``), unless ``source_video`` is given.
        source_video: frames ``(B or 1, F, 3, H, W)`` in [-1, 1]: DDIM-inverted with the empty
            prompt (no guidance) to give x_T, as Tune-A-Video samples after tuning.
        first_frame: LAMP: frame-0 pixels ``(B or 1, 3, H, W)`` in [-1, 1], kept clean.
        prior, prior_strength: Video Adapter prior UNet p and lambda (same latent space and text encoder).
        guidance_rescale, eta: as :func:`denoise`; eta > 0 steps add ``noise``-kind noise seeded
            ``seed + 1 + i``.
        decode: decode the latents to frames.
        cuda_graph: replay each loop's step as a captured CUDA graph (CUDA only).

    Returns:
        :class:`SampleResult` with per-stage :class:`StageTimes`.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    videos, device = len(prompts), model.device
    times = StageTimes()
    vae_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    sample_size = model.unet.config.sample_size
    height = height or sample_size * vae_factor
    width = width or sample_size * vae_factor
    if height % vae_factor or width % vae_factor:
        raise ValueError(f"height, width: expected multiples of {vae_factor}, got {height}x{width}")
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")

    with _Stage(times, "text encoding", device):
        embeds = encode_prompt(model, prompts + [negative_prompt, ""])
        cond, uncond = embeds[:videos], embeds[videos:videos + 1].expand(videos, -1, -1)
        empty = embeds[videos + 1:].expand(videos, -1, -1)  # Tune-A-Video inverts with the empty prompt

    first_latent = None
    if first_frame is not None:
        with _Stage(times, "encoding", device):
            first_latent = encode_video(model, first_frame[:, None])[:, :, 0].expand(videos, -1, -1, -1)
    if source_video is not None:
        with _Stage(times, "encoding", device):
            clean = encode_video(model, source_video).expand(videos, -1, -1, -1, -1)
        with _Stage(times, "inversion", device, num_inference_steps):
            start = invert(model.unet, clean, empty, scheduler=model.scheduler,
                           num_inference_steps=num_inference_steps, progress=progress, cuda_graph=cuda_graph)
    else:
        shape = (videos, model.unet.config.in_channels, num_frames, height // vae_factor, width // vae_factor)
        start = initial_noise(shape, kind=noise, alpha=noise_alpha, seed=seed, device=device, dtype=model.dtype)

    with _Stage(times, "denoising", device, num_inference_steps):
        latents = denoise(model.unet, start, cond, uncond, scheduler=model.scheduler,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, prior=prior,
                          prior_strength=prior_strength, guidance_rescale=guidance_rescale, first_frame=first_latent,
                          eta=eta, noise=noise, noise_alpha=noise_alpha, seed=seed + 1, progress=progress,
                          cuda_graph=cuda_graph)
    video = None
    if decode:
        with _Stage(times, "decoding", device):
            video = decode_latents(model, latents)
    return SampleResult(video=video, latents=latents, initial_latents=start, times=times)
