"""One-shot video tuning: Tune-A-Video, and LAMP's first-frame-conditioned variant (METHODS.md
sections 3 and 6).

The recipe: inflate an image UNet (sparse-causal frame attention, new temporal layers), then
fine-tune on one video and its prompt only the parameters of the modules whose names end in
``attn1.to_q``, ``attn2.to_q`` and ``attn_temp`` (``norm_temp`` stays as initialised), with
AdamW (lr 3e-5, betas (0.9, 0.999), weight decay 1e-2, constant), gradient clipping 1.0,
mixed precision and gradient checkpointing. Each step draws one timestep for the video (shared
by its frames) and the noise from vidgen's fused ``add_noise`` (i.i.d., or PYoCo's correlated
``mixed``/``progressive`` noise, which is then the epsilon target).

LAMP: first-frame attention; frame 0 is the condition, so it stays clean in the noisy input and
the loss covers frames 1 onwards only.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..ops import add_noise
from .checkpoint import step_generator
from .data import ClipSpec, clip_latents, model_pixel_size
from .loop import TrainResult, TrainSettings, make_accelerator, resolve_settings, save_video_model, train

TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
PREDICTION_TYPES = ("epsilon", "v_prediction")
NOISE_KINDS = ("iid", "mixed", "progressive")


def trainable_parameter_names(unet: torch.nn.Module, modules: tuple[str, ...] = TRAINABLE_MODULES) -> list[str]:
    """Names of the parameters of every module whose name ends in one of ``modules`` (Tune-A-Video)."""
    names = []
    for module_name, module in unet.named_modules():
        if module_name.endswith(modules):
            names += [f"{module_name}.{name}" for name, _ in module.named_parameters()]
    return list(dict.fromkeys(names))


def prediction_target(prediction_type: str, eps: torch.Tensor, clean: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """What a denoiser of ``prediction_type`` is trained to output for ``x_t = sqrt(a_t) clean +
    sqrt(1 - a_t) eps``: the noise, or ``v = sqrt(a_t) eps - sqrt(1 - a_t) clean``. ``a_t`` broadcasts."""
    if prediction_type == "epsilon":
        return eps
    return a_t.sqrt() * eps - (1 - a_t).sqrt() * clean


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, text: torch.Tensor, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator, *, noise: str = "iid", noise_alpha: float | None = None,
                   prediction_type: str = "epsilon", clean_first_frame: bool = False) -> torch.Tensor:
    """The denoising loss of one batch of videos ``latents (B, C, F, h, w)`` with text ``(B, L, C_t)``.

    One timestep per video, uniform over the training schedule, shared by its frames; noise from
    :func:`vidgen.ops.add_noise` (seeded from ``generator``). The target is the noise (epsilon) or
    ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``. ``clean_first_frame`` (LAMP): frame 0 enters clean
    and is left out of the loss. Returns the mean squared error in fp32.
    """
    videos, device = latents.shape[0], latents.device
    timesteps = torch.randint(0, alphas_cumprod.numel(), (videos,), generator=generator).to(device)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    noisy, eps = add_noise(latents, timesteps, alphas_cumprod, kind=noise, alpha=noise_alpha, frame_dim=2, seed=seed)
    if clean_first_frame:
        noisy = torch.cat([latents[:, :, :1], noisy[:, :, 1:]], dim=2)
    prediction = unet(noisy, timesteps, text).sample
    a_t = alphas_cumprod[timesteps].view(videos, 1, 1, 1, 1).to(latents.dtype)
    target = prediction_target(prediction_type, eps, latents, a_t)
    if clean_first_frame:
        prediction, target = prediction[:, :, 1:], target[:, :, 1:]
    return F.mse_loss(prediction.float(), target.float())


def check_noise(noise: str, prediction_type: str | None) -> None:
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise: expected one of {', '.join(NOISE_KINDS)}, got {noise!r}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def tune(model: str | os.PathLike, video: str | os.PathLike, prompt: str, out: str | os.PathLike, *,
         frames: int = 8, height: int | None = None, width: int | None = None, stride: int = 1, start: int = 0,
         noise: str = "iid", noise_alpha: float | None = None, lamp: bool = False,
         prediction_type: str | None = None, use_vidgen_ops: bool = True,
         settings: TrainSettings | None = None, **setting_overrides) -> TrainResult:
    """Tune-A-Video (or LAMP, ``lamp=True``) one-shot tuning of ``model`` on one video.

    Args:
        model: a local Stable Diffusion 1.x/2.x diffusers folder (its UNet is inflated), or a
            folder this function wrote (tuning continues from its VideoUNet).
        video: a video file (.mp4/.gif) or a folder of frames; ``frames`` frames every
            ``stride``-th from ``start``, resized and centre-cropped to ``height x width``
            (default: the model's size), encoded once with the VAE (cached in ``out/latents``).
        prompt: the video's caption.
        out: output folder: ``checkpoint.safetensors`` (every ``checkpoint_every`` steps),
            ``loss.png``, and at the end a model folder (``unet/`` + the other components) that
            ``vidgen sample --model out`` loads.
        noise, noise_alpha: training noise kind and PYoCo alpha (``None``: 1 mixed, 2 progressive).
        lamp: LAMP: first-frame attention, frame 0 kept clean, loss on frames 1:.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (default: the model's scheduler's).
        use_vidgen_ops: run frame and temporal attention and the pooled GroupNorms on vidgen's kernels (else the reference).
        settings, setting_overrides: :class:`TrainSettings` (Tune-A-Video's recipe by default),
            or individual fields of it (``steps=``, ``lr=``, ``mixed_precision=``, ...).
    """
    from ..sampling import VideoModel, encode_prompt

    settings = resolve_settings(settings, setting_overrides)
    check_noise(noise, prediction_type)
    if lamp and frames < 2:
        raise ValueError(f"frames: LAMP trains on frames 1: and needs at least 2 frames, got {frames}")
    model_dir, out = os.fspath(model), os.fspath(out)
    os.makedirs(out, exist_ok=True)
    accelerator = make_accelerator(settings.device)
    mode = "first_frame" if lamp else "sparse_causal"
    torch.manual_seed(settings.seed)  # the fresh temporal layers' initialisation is part of the run
    loaded = VideoModel.from_pretrained(model_dir, frame_mode=mode, device=accelerator.device)
    unet = loaded.unet
    if unet.config.frame_mode != mode:
        raise ValueError(f"model: its saved VideoUNet uses {unet.config.frame_mode} frame attention; "
                         f"{'LAMP' if lamp else 'Tune-A-Video'} tuning needs {mode}")
    default_height, default_width = model_pixel_size(loaded)
    spec = ClipSpec(frames, height or default_height, width or default_width, stride, start)
    latents = clip_latents(loaded, model_dir, os.fspath(video), spec, os.path.join(out, "latents"))
    latents = latents[None].to(accelerator.device)
    text = encode_prompt(loaded, [prompt]).float()
    alphas_cumprod = loaded.scheduler.alphas_cumprod.to(device=accelerator.device, dtype=torch.float32)
    prediction_type = prediction_type or loaded.scheduler.config.prediction_type
    check_noise(noise, prediction_type)  # the scheduler's may be one training cannot target ("sample")
    del loaded  # the VAE and text encoder are not needed while training
    unet.use_vidgen_ops(frame_attention=use_vidgen_ops, temporal_attention=use_vidgen_ops)

    def loss_fn(net, step, rank, world):
        return diffusion_loss(net, latents, text, alphas_cumprod, step_generator(settings.seed, step, rank),
                              noise=noise, noise_alpha=noise_alpha, prediction_type=prediction_type,
                              clean_first_frame=lamp)

    run = {"recipe": "lamp" if lamp else "tune-a-video", "model": os.path.abspath(model_dir),
           "video": os.path.abspath(os.fspath(video)), "clip": vars(spec), "prompt": prompt, "noise": noise,
           "noise_alpha": noise_alpha, "prediction_type": prediction_type}
    return train(unet, trainable_parameter_names(unet), loss_fn, settings, out, run, accelerator,
                 on_finish=lambda trained: {"model": save_video_model(trained, model_dir, out, prediction_type)})
