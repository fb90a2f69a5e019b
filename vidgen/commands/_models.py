"""The model a command runs, shared by ``vidgen sample``, ``invert`` and ``sample --prompts``: its
command-line arguments, their up-front checks, and the loaders of each kind of model.
"""
from __future__ import annotations

import argparse
import os

import torch

from .. import default_model
from ..vocabulary import folder_vocabulary, vocabulary_problem
from . import _args
from ._args import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from ..integration.video_unet import INFLATION_MODES

    parser.add_argument("--model", help="a local diffusers Stable Diffusion folder (SD 1.x/2.x), or a saved "
                                        "vidgen VideoUNet model folder (default: the built-in model, --arch)")
    parser.add_argument("--arch", choices=default_model.ARCHS, default=default_model.DEFAULT_ARCH,
                        help="the built-in model when --model is not given: shapes (trained on moving shapes), "
                             "tiny or sd15 (random weights, for timings)")
    parser.add_argument("--frame-mode", choices=INFLATION_MODES, default="sparse_causal",
                        help="frame attention of the inflated UNet: Tune-A-Video's sparse_causal or LAMP's first_frame")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N")
    parser.add_argument("--height", type=_args.pixels, default=None,
                        help="pixels, a multiple of 8 (default: the model's sample size)")
    parser.add_argument("--width", type=_args.pixels, default=None,
                        help="pixels, a multiple of 8 (default: the model's sample size)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, and no loading bars or info logs from diffusers/transformers")


def check_model_arguments(args, *, image_to_video: bool = False) -> None:
    """What every command built on :func:`add_model_arguments` checks before loading anything;
    ``image_to_video``: the command also runs Stable Video Diffusion folders (:func:`is_svd_folder`)."""
    _args.check_backend()
    _args.check_device(args.device)
    if args.model is None:
        return
    if image_to_video and is_svd_folder(args.model):
        _args.check_model_folder("--model", args.model, _args.SVD_CONFIGS, "a diffusers Stable Video Diffusion folder")
    else:
        _args.check_model_folder("--model", args.model)


def is_svd_folder(path: str | None) -> bool:
    """Whether ``path`` is a diffusers folder whose model_index.json names StableVideoDiffusionPipeline."""
    return path is not None and os.path.isdir(path) and _args.pipeline_class(path) == _args.SVD_PIPELINE


def check_steps(args) -> None:
    """DDIM cannot take more steps than the model has training timesteps (diffusers would refuse,
    after the model loaded): read the count from the scheduler's configuration file instead."""
    limit = default_model.SD15_SCHEDULER["num_train_timesteps"]  # the built-in models'
    if args.model is not None:
        config = _args.check_config_folder("--model", os.path.join(args.model, "scheduler"),
                                           "a diffusers scheduler folder", "scheduler_config.json")
        limit = config.get("num_train_timesteps", limit)
    if args.steps > limit:
        raise UsageError(f"--steps: {args.steps} is more than the model's {limit} training timesteps")


def check_vocabulary(args, prompts: list[tuple[str, str]]) -> None:
    """Refuse prompts with words outside the model's closed vocabulary (the built-in shapes model's
    grammar), read from its tokenizer's configuration before anything loads. ``prompts``: (flag, text)."""
    folder = args.model if args.model is not None else (
        default_model.shapes_dir() if args.arch == "shapes" else None)
    words = folder_vocabulary(folder) if folder else None
    for flag, prompt in prompts:
        problem = vocabulary_problem(words, prompt, flag)
        if problem:
            raise UsageError(problem)


def resolve_model_dir(args) -> str:
    if args.model is None:
        return default_model.ensure(args.arch)
    _args.check_model_folder("--model", args.model)
    return args.model


def resolve_dtype(args) -> torch.dtype:
    if args.dtype:
        return DTYPES[args.dtype]
    return torch.float16 if torch.device(args.device).type == "cuda" else torch.float32


def model_pixel_size(model) -> tuple[int, int]:
    """(height, width) in pixels the model's UNet was trained at."""
    side = model.unet.config.sample_size * 2 ** (len(model.vae.config.block_out_channels) - 1)
    return side, side


def load_video_model(path: str, **kwargs):
    """``VideoModel.from_pretrained`` for the commands that sample or invert. An SD folder is inflated on
    load with fresh temporal layers whose output bias is not zero, so they shape the video: they are
    drawn from a fixed seed, and one folder is the same model in every run, command and process
    (``vidgen tune`` draws them from its --seed instead: there they are part of the training run)."""
    from ..sampling import VideoModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VideoModel.from_pretrained(path, **kwargs)


def load_video_models(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """(model, --prior's UNet or None, height, width) of a Tune-A-Video / LAMP / Video Adapter run;
    the pixel size is --height/--width, else the model's own."""
    model = load_video_model(model_dir, frame_mode=args.frame_mode, torch_dtype=dtype, device=device)
    prior = None
    if args.prior:
        prior = load_video_model(args.prior, frame_mode=args.frame_mode, torch_dtype=dtype, device=device).unet
    default_height, default_width = model_pixel_size(model)
    return model, prior, args.height or default_height, args.width or default_width


def load_animatediff(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """(AnimateDiff pipeline with --motion-adapter and a DDIM scheduler, unpatched, height, width);
    the pixel size is --height/--width, else the UNet's own."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(args.motion_adapter, torch_dtype=dtype)
    pipe = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=adapter, torch_dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe, args.height or default_size, args.width or default_size


def load_svd(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """(Stable Video Diffusion pipeline, unpatched, height, width); the pixel size is
    --height/--width, else the pipeline's own default."""
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(model_dir, torch_dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe, args.height or default_size, args.width or default_size
