"""Training the moving-shapes model from scratch: the VAE, then the text-to-image prior, then the
video models the seeds make from it.

* :func:`train_vae`: the autoencoder on single frames (L1 + L2 reconstruction, a KL weight of
  1e-6 as Stable Diffusion's), its ``scaling_factor`` set so that latents have unit variance.
* :func:`train_prior`: the image UNet (v-prediction on a zero-terminal-SNR schedule:
  ``models.SCHEDULER_CONFIG``) on single frames and their captions, the text encoder frozen or
  trained with it, 10 % of the captions dropped to the empty prompt for classifier-free guidance,
  with an exponential moving average of the weights (what the prior samples with).
* :func:`finetune_video`: a video model made from the prior, trained on captioned clips with
  ``vidgen.train``'s loop: Tune-A-Video's inflation (``vidgen.inflate``; its temporal layers and
  frame attention trained) or an AnimateDiff motion adapter (diffusers' ``UNetMotionModel``; the
  motion modules trained, the image UNet frozen), with i.i.d. or PYoCo's correlated noise.

Every function is a pure function of its seed on one CPU thread (the reproduction runs jobs in
parallel processes instead of threads: deterministic, and faster on a shared machine).
"""
from __future__ import annotations

import copy
import os

import torch

from ..ops import add_noise
from ..train.tune import prediction_target
from . import models

# ----------------------------------------------------------------------------------------------
# Autoencoder
# ----------------------------------------------------------------------------------------------


def train_vae(frames: torch.Tensor, *, steps: int, seed: int, batch_size: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, progress=None):
    """An AutoencoderKL trained on ``frames (N, 3, H, W)`` in [-1, 1] (one-cycle learning rate)."""
    vae = models.build_vae(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(steps):
        x = frames[torch.randint(len(frames), (batch_size,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        error = vae.decode(posterior.sample(generator)).sample - x
        loss = error.abs().mean() + error.square().mean() + kl_weight * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if progress:
            progress(step, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in frames[:2048].split(256)])
    vae.register_to_config(scaling_factor=float(1 / means.std()))
    return vae


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Scaled latents (posterior means) of ``frames (N, 3, H, W)`` in [-1, 1]."""
    return torch.cat([vae.encode(part).latent_dist.mean for part in frames.split(chunk)]) * vae.config.scaling_factor


# ----------------------------------------------------------------------------------------------
# Text-to-image prior
# ----------------------------------------------------------------------------------------------
def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=models.TOKENS, truncation=True,
                     return_tensors="pt").input_ids


class _EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of its decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.average = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.average.parameters(), module.parameters()):
            average.lerp_(current, 1 - decay)


def image_diffusion_loss(unet, latents: torch.Tensor, text: torch.Tensor, alphas_cumprod: torch.Tensor,
                         generator: torch.Generator, prediction_type: str = "v_prediction",
                         min_snr_gamma: float | None = 5.0) -> torch.Tensor:
    """Denoising loss of images ``(B, C, h, w)``: one uniform timestep per image, noise from vidgen's
    ``add_noise`` (a one-frame video). The target is ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``
    (unweighted: its error is the clean image's error times ``1 + SNR``, so no timestep dominates)
    or the noise, each image then weighted by min-SNR-gamma (``min(SNR, gamma) / SNR``; Hang et al.
    2023: the nearly clean timesteps stop dominating)."""
    timesteps = torch.randint(0, alphas_cumprod.numel(), (latents.shape[0],), generator=generator)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    noisy, eps = add_noise(latents[:, :, None], timesteps, alphas_cumprod, kind="iid", seed=seed)
    noisy = noisy[:, :, 0].contiguous(memory_format=torch.channels_last)
    prediction = unet(noisy, timesteps, text).sample
    target = prediction_target(prediction_type, eps[:, :, 0], latents, alphas_cumprod[timesteps].view(-1, 1, 1, 1))
    if prediction_type == "v_prediction":
        return (prediction - target).square().mean()
    error = (prediction - target).square().mean(dim=(1, 2, 3))
    if min_snr_gamma is None:
        return error.mean()
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    return (error * snr.clamp(max=min_snr_gamma) / snr).mean()


def train_prior(latents: torch.Tensor, captions: list[str], tokenizer, *, steps: int, seed: int,
                batch_size: int = 64, lr: float = 1e-3, uncond_prob: float = 0.1, ema_decay: float = 0.995,
                min_snr_gamma: float | None = 5.0, train_text_encoder: bool = True, progress=None):
    """The image UNet trained on ``latents (N, C, h, w)`` and their captions, with the text encoder
    (``train_text_encoder``) or against a frozen one. Returns the EMA weights ``(unet, text_encoder)``
    in eval mode."""
    unet, text_encoder = models.build_unet(seed), models.build_text_encoder(tokenizer, seed + 1)
    unet.to(memory_format=torch.channels_last)  # a quarter faster convolutions on a CPU
    scheduler = models.build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.float()
    distinct = sorted(set(captions))
    ids = tokenize(tokenizer, distinct + [""])
    caption_index = torch.tensor([distinct.index(c) for c in captions])
    text_encoder.requires_grad_(train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    ema_unet, ema_text = _EMA(unet, ema_decay), _EMA(text_encoder, ema_decay)
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    text_encoder.train()
    for step in range(steps):
        rows = torch.randint(len(latents), (batch_size,), generator=generator)
        dropped = torch.rand(batch_size, generator=generator) < uncond_prob
        text = text_encoder(ids[torch.where(dropped, len(distinct), caption_index[rows])])[0]
        loss = image_diffusion_loss(unet, latents[rows], text, alphas_cumprod, generator,
                                    scheduler.config.prediction_type, min_snr_gamma)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        if progress:
            progress(step, loss.item())
    return ema_unet.average, ema_text.average


# ----------------------------------------------------------------------------------------------
# Video models from the prior
# ----------------------------------------------------------------------------------------------
VIDEO_ARCHS = ("inflated", "motion_adapter")


class TextPerFrame(torch.nn.Module):
    """A diffusers ``UNetMotionModel`` taking one text embedding per video, as vidgen's training
    losses pass it (the motion UNet wants one per frame)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states.repeat_interleave(sample.shape[2], dim=0))


def motion_unet(prior_dir: str, seed: int):
    """``UNetMotionModel.from_unet2d`` of the prior's UNet and a fresh MotionAdapter sized to it, its
    output projections zero-initialised as the original AnimateDiff's (a fresh module is the identity)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel.from_pretrained(prior_dir, subfolder="unet")
    config = unet2d.config
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=config.block_out_channels,
                            motion_layers_per_block=config.layers_per_block,
                            motion_num_attention_heads=config.attention_head_dim,
                            motion_norm_num_groups=config.norm_num_groups, motion_max_seq_length=32)
    for name, parameter in adapter.named_parameters():
        if ".proj_out." in name:
            torch.nn.init.zeros_(parameter)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    return unet


def inflated_unet(prior_dir: str, seed: int):
    """Tune-A-Video's inflation of the prior's UNet (sparse-causal frame attention, fresh temporal layers)."""
    from .. import VideoUNet

    torch.manual_seed(seed)
    return VideoUNet.from_pretrained_2d(prior_dir, frame_mode="sparse_causal")


def video_trainable(arch: str, unet: torch.nn.Module) -> list[str]:
    """What a video fine-tune trains: the inflated UNet's temporal layers, frame attention and text
    cross-attention queries (Tune-A-Video's choice, with all of the frame attention as the data
    is many clips, not one), or the motion adapter's modules (the image UNet frozen, as AnimateDiff)."""
    names = [name for name, _ in unet.named_parameters()]
    if arch == "inflated":
        return [n for n in names if "_temp." in n or ".attn1." in n or ".attn2.to_q." in n]
    return [n for n in names if "motion_modules." in n]


def finetune_video(arch: str, prior_dir: str, latents: torch.Tensor, captions: list[str], out: str, *,
                   noise: str, steps: int, seed: int, batch_size: int = 4, lr: float = 1e-3,
                   uncond_prob: float = 0.1, noise_alpha: float | None = None):
    """Fine-tune a video model made from the prior on clips ``latents (N, C, F, h, w)`` (scaled)
    with their captions, through ``vidgen.train``'s loop and Video Adapter's data loss (which is
    the plain denoising loss of a captioned dataset). Returns the trained video UNet (eval mode)."""
    from ..sampling import VideoModel, encode_prompt
    from ..train import TrainSettings
    from ..train.adapter import dataset_loss
    from ..train.data import LatentDataset
    from ..train.loop import make_accelerator, train

    if arch not in VIDEO_ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(VIDEO_ARCHS)}, got {arch!r}")
    unet = inflated_unet(prior_dir, seed) if arch == "inflated" else motion_unet(prior_dir, seed)
    loaded = VideoModel.from_pretrained(prior_dir, unet=unet)
    distinct = sorted(set(captions))
    dataset = LatentDataset(latents, torch.tensor([distinct.index(c) for c in captions]),
                            encode_prompt(loaded, distinct + [""]).float())
    alphas_cumprod = loaded.scheduler.alphas_cumprod.float()
    prediction_type = loaded.scheduler.config.prediction_type
    del loaded
    trainable = video_trainable(arch, unet)
    model = unet if arch == "inflated" else TextPerFrame(unet)
    if arch == "motion_adapter":
        trainable = [f"unet.{n}" for n in trainable]
    loss_fn = dataset_loss(dataset, alphas_cumprod, seed=seed, batch_size=batch_size, uncond_prob=uncond_prob,
                           noise=noise, noise_alpha=noise_alpha, prediction_type=prediction_type)
    settings = TrainSettings(steps=steps, lr=lr, seed=seed, device="cpu", gradient_checkpointing=False,
                             checkpoint_every=steps, progress=False, resume=True)
    run = {"recipe": f"moving-shapes-{arch}", "noise": noise, "noise_alpha": noise_alpha, "videos": len(captions),
           "batch_size": batch_size, "uncond_prob": uncond_prob}
    os.makedirs(out, exist_ok=True)
    result = train(model, trainable, loss_fn, settings, out, run, make_accelerator("cpu"))
    return unet.eval(), result.losses
