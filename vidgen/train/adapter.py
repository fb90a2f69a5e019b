"""Video Adapter (arXiv 2306.01872, METHODS.md section 4): train a small video UNet on a folder of
captioned videos, to be composed with a large frozen prior at sampling
(``vidgen sample --model OUT --prior PRIOR``).

The small model is a :class:`~vidgen.VideoUNet` (frame and temporal attention), built
from scratch in a size chosen by flags, trained in full, in the prior's latent space and on its
text encoder (both come from the prior's folder, so the two scores can be added). A fraction of
the captions is dropped to the empty prompt so the small model also learns the unconditional
score that guidance needs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..integration.video_unet import VideoUNet
from .checkpoint import step_generator
from .data import ClipSpec, LatentDataset, batch_indices, encode_dataset, find_videos
from .loop import TrainResult, TrainSettings, make_accelerator, resolve_settings, save_video_model, train
from .tune import check_noise, diffusion_loss


@dataclass
class AdapterConfig:
    """Size of the small model: channels per resolution level (the deepest level has no
    attention, as in SD), ResNet/transformer layers per level, attention heads, GroupNorm groups."""

    channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    heads: int = 4
    norm_groups: int = 32
    frame_mode: str = "sparse_causal"

    def __post_init__(self):
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"channels: expected at least two positive widths, got {self.channels}")
        bad = [c for c in self.channels if c % self.norm_groups or c % self.heads]
        if bad:
            raise ValueError(f"channels: every width must divide by norm_groups={self.norm_groups} and "
                             f"heads={self.heads}; {bad} do not")


def _read_config(model_dir: str, component: str) -> dict:
    path = os.path.join(model_dir, component, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model: {model_dir} is not a diffusers Stable Diffusion folder (no {component}/config.json)")
    with open(path) as f:
        return json.load(f)


def build_small_unet(model_dir: str, config: AdapterConfig, latent_size: int, seed: int) -> VideoUNet:
    """A fresh small VideoUNet in the prior's latent space (channels) and text space (width)."""
    vae, text = _read_config(model_dir, "vae"), _read_config(model_dir, "text_encoder")
    levels = len(config.channels)
    torch.manual_seed(seed)
    return VideoUNet(
        sample_size=latent_size, in_channels=vae["latent_channels"], out_channels=vae["latent_channels"],
        block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=text["hidden_size"], attention_head_dim=config.heads, norm_num_groups=config.norm_groups,
        frame_mode=config.frame_mode)


def dataset_loss(dataset: LatentDataset, alphas_cumprod: torch.Tensor, *, seed: int, batch_size: int,
                 uncond_prob: float, noise: str, noise_alpha: float | None, prediction_type: str):
    """``loss_fn(model, step, rank, world)``: the loss of rank ``rank``'s batch at ``step`` (its rows
    from :func:`batch_indices`, captions dropped to the empty prompt with ``uncond_prob``)."""
    empty = dataset.embeddings.shape[0] - 1
    device = dataset.latents.device

    def loss_fn(net: torch.nn.Module, step: int, rank: int, world: int) -> torch.Tensor:
        generator = step_generator(seed, step, rank)
        rows = batch_indices(len(dataset), batch_size, step, rank, world, seed).to(device)
        dropped = (torch.rand(batch_size, generator=generator) < uncond_prob).to(device)
        text = dataset.embeddings[torch.where(dropped, empty, dataset.caption_index[rows])]
        return diffusion_loss(net, dataset.latents[rows], text, alphas_cumprod, generator, noise=noise,
                              noise_alpha=noise_alpha, prediction_type=prediction_type)

    return loss_fn


def train_adapter(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
                  captions: str | None = None, frames: int = 8, height: int | None = None, width: int | None = None,
                  stride: int = 1, config: AdapterConfig | None = None, batch_size: int = 1,
                  uncond_prob: float = 0.1, noise: str = "iid", noise_alpha: float | None = None,
                  prediction_type: str | None = None, use_vidgen_ops: bool = True,
                  settings: TrainSettings | None = None, **setting_overrides) -> TrainResult:
    """Train a small Video Adapter model on the captioned videos in ``data``.

    Args:
        model: the prior's local diffusers folder: its VAE, text encoder, tokenizer and scheduler
            are used (and linked into ``out``); its UNet is not loaded.
        data, captions: the dataset folder and optional captions JSON (see :mod:`vidgen.train.data`).
        frames, height, width, stride: clip settings (default size: the prior's).
        config: the small model's size (:class:`AdapterConfig`).
        batch_size: videos per step per process (data parallel under ``accelerate launch``).
        uncond_prob: probability that a video's caption is replaced by the empty prompt.
        noise, noise_alpha, prediction_type, use_vidgen_ops: as :func:`vidgen.train.tune`.
        settings, setting_overrides: :class:`TrainSettings`; every parameter is trained.
    """
    from ..sampling import VideoModel

    settings = resolve_settings(settings, {"lr": 1e-4, "gradient_checkpointing": False, **setting_overrides}
                                if settings is None else setting_overrides)
    config = config or AdapterConfig()
    check_noise(noise, prediction_type)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not 0 <= uncond_prob <= 1:
        raise ValueError(f"uncond_prob: expected a probability in [0, 1], got {uncond_prob}")
    model_dir, out = os.fspath(model), os.fspath(out)
    os.makedirs(out, exist_ok=True)
    accelerator = make_accelerator(settings.device)
    videos = find_videos(os.fspath(data), captions)

    vae_factor = 2 ** (len(_read_config(model_dir, "vae")["block_out_channels"]) - 1)
    prior_size = _read_config(model_dir, "unet")["sample_size"] * vae_factor
    height, width = height or prior_size, width or prior_size
    if height % vae_factor or width % vae_factor:
        raise ValueError(f"height, width: expected multiples of the VAE factor {vae_factor}, got {height}x{width}")
    unet = build_small_unet(model_dir, config, max(height, width) // vae_factor, settings.seed)
    loaded = VideoModel.from_pretrained(model_dir, unet=unet, device=accelerator.device)
    spec = ClipSpec(frames, height, width, stride)
    # Every rank encodes (through the shared cache, written by whichever rank gets there first).
    dataset = encode_dataset(loaded, model_dir, videos, spec, os.path.join(out, "latents")).to(accelerator.device)
    alphas_cumprod = loaded.scheduler.alphas_cumprod.to(device=accelerator.device, dtype=torch.float32)
    prediction_type = prediction_type or loaded.scheduler.config.prediction_type
    check_noise(noise, prediction_type)  # the scheduler's may be one training cannot target ("sample")
    del loaded
    unet.use_vidgen_ops(frame_attention=use_vidgen_ops, temporal_attention=use_vidgen_ops)
    loss_fn = dataset_loss(dataset, alphas_cumprod, seed=settings.seed, batch_size=batch_size,
                           uncond_prob=uncond_prob, noise=noise, noise_alpha=noise_alpha,
                           prediction_type=prediction_type)
    run = {"recipe": "video-adapter", "model": os.path.abspath(model_dir), "data": os.path.abspath(os.fspath(data)),
           "videos": len(videos), "clip": vars(spec), "config": vars(config) | {"channels": list(config.channels)},
           "batch_size": batch_size, "uncond_prob": uncond_prob, "noise": noise, "noise_alpha": noise_alpha,
           "prediction_type": prediction_type}
    names = [name for name, _ in unet.named_parameters()]
    return train(unet, names, loss_fn, settings, out, run, accelerator,
                 on_finish=lambda trained: {"model": save_video_model(trained, model_dir, out, prediction_type)})
