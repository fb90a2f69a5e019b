"""``vidgen sample``: text-to-video with a Tune-A-Video/LAMP model, AnimateDiff, or Video Adapter.

With no ``--model``, the built-in random-weight default model (``--arch tiny``, or ``sd15`` for
the full SD1.5 architecture) runs the whole path, and ``--compare`` (on by default then) runs
it a second time with the reference PyTorch formulation of the same model, so the per-stage
timing table shows vidgen against the default modules on identical weights and inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .. import default_model
from ..video_io import frames_to_tensor, read_video, write_video

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a local diffusers Stable Diffusion folder (SD 1.x/2.x), or a saved "
                                        "vidgen VideoUNet model folder; default: the built-in random-weight model")
    parser.add_argument("--arch", choices=default_model.ARCHS, default="tiny",
                        help="architecture of the built-in model when --model is not given")
    parser.add_argument("--attention", choices=("sparse_causal", "first_frame"), default="sparse_causal",
                        help="frame attention of the inflated UNet (Tune-A-Video / LAMP)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def resolve_model_dir(args) -> str:
    if args.model is None:
        return default_model.ensure(args.arch)
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model: {args.model} is not a folder (expected a local diffusers model folder)")
    return args.model


def resolve_dtype(args) -> torch.dtype:
    if args.dtype:
        return DTYPES[args.dtype]
    return torch.float16 if torch.device(args.device).type == "cuda" else torch.float32


def load_source_video(path: str, frames: int, height: int, width: int) -> torch.Tensor:
    """(1, F, 3, H, W) in [-1, 1] from a video file or frame folder, resized and centre-cropped."""
    video = read_video(path, max_frames=frames)
    if len(video) < frames:
        raise ValueError(f"--video: {path} has {len(video)} frames, --frames asks for {frames}")
    return frames_to_tensor(video, size=(height, width))[None]


def _save(result_video: torch.Tensor, out: str, fps: int) -> list[str]:
    """Write (B, F, 3, H, W) [0, 1] videos; several videos get _0, _1... suffixes."""
    frames = (result_video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    if len(frames) == 1:
        return [write_video(out, frames[0], fps=fps)]
    stem, ext = os.path.splitext(out)
    return [write_video(f"{stem}_{i}{ext}", video, fps=fps) for i, video in enumerate(frames)]


def _sample_video_model(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    from ..models import VideoUNet
    from ..sampling import VideoModel, sample_video

    model = VideoModel.from_pretrained(model_dir, frame_attention=args.attention, torch_dtype=dtype, device=device)
    prior = None
    if args.prior:
        prior = VideoModel.from_pretrained(args.prior, frame_attention=args.attention, torch_dtype=dtype,
                                           device=device).unet
    vae_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    height = args.height or model.unet.config.sample_size * vae_factor
    width = args.width or model.unet.config.sample_size * vae_factor
    source = load_source_video(args.video, args.frames, height, width).to(device) if args.video else None

    def run():
        return sample_video(model, args.prompt, num_frames=args.frames, height=height, width=width,
                            num_inference_steps=args.steps, guidance_scale=args.guidance, noise=args.noise,
                            noise_alpha=args.noise_alpha, seed=args.seed, source_video=source, prior=prior,
                            prior_strength=args.prior_strength, progress=not args.quiet)

    result = run()
    tables = {"vidgen": result.times}
    if args.compare and isinstance(model.unet, VideoUNet):
        for unet in [model.unet] + ([prior] if isinstance(prior, VideoUNet) else []):
            unet.use_vidgen_ops(frame_attention=False, temporal_attention=False)
        tables["reference"] = run().times
    return result.video, tables


def _sample_animatediff(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    import vidgen

    from ..sampling import initial_noise

    adapter = MotionAdapter.from_pretrained(args.motion_adapter, torch_dtype=dtype)
    pipe = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=adapter, torch_dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    height = args.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = args.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = initial_noise((1, pipe.unet.config.in_channels, args.frames, height // pipe.vae_scale_factor,
                             width // pipe.vae_scale_factor), kind=args.noise, alpha=args.noise_alpha,
                            seed=args.seed, device=device, dtype=dtype)

    def run():
        start = time.perf_counter()
        out = pipe(args.prompt, num_frames=args.frames, height=height, width=width,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, latents=latents.clone(),
                   output_type="pt")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out.frames, time.perf_counter() - start

    tables = {}
    if args.compare:
        _, tables["diffusers"] = run()
    vidgen.patch(pipe)
    video, tables["vidgen"] = run()
    return video, {name: _SecondsTable(seconds) for name, seconds in tables.items()}


class _SecondsTable:
    """A one-stage timing table for pipelines that time as a whole."""

    def __init__(self, seconds: float):
        self.seconds = {"pipeline": seconds}

    def table(self) -> str:
        return f"{'stage':<16}{'seconds':>10}\n{'pipeline':<16}{self.seconds['pipeline']:>10.3f}"


def print_comparison(tables: dict) -> None:
    names = list(tables)
    stages = list(dict.fromkeys(s for t in tables.values() for s in t.seconds))
    print(f"\n{'stage':<16}" + "".join(f"{n:>12}" for n in names) + ("   speedup" if len(names) == 2 else ""))
    for stage in stages + ["total"]:
        values = [sum(t.seconds.values()) if stage == "total" else t.seconds.get(stage) for t in tables.values()]
        cells = "".join(f"{v:>12.3f}" if v is not None else f"{'-':>12}" for v in values)
        ratio = ""
        if len(values) == 2 and all(values) and names[0] == "vidgen":
            ratio = f"{values[1] / values[0]:>9.2f}x"
        elif len(values) == 2 and all(values):
            ratio = f"{values[0] / values[1]:>9.2f}x"
        print(f"{stage:<16}{cells}{ratio}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vidgen sample", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--motion-adapter", help="a local diffusers MotionAdapter folder: sample with AnimateDiff")
    parser.add_argument("--prior", help="Video Adapter: a local folder of the large prior model (same VAE/text encoder)")
    parser.add_argument("--prior-strength", type=float, default=0.1)
    parser.add_argument("--prompt", default="a red horse runs in the sky")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; 10 for the tiny model)")
    parser.add_argument("--guidance", type=float, default=12.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", choices=("iid", "mixed", "progressive"), default="iid")
    parser.add_argument("--noise-alpha", type=float, default=None, help="PYoCo alpha (default: 1 mixed, 2 progressive)")
    parser.add_argument("--video", help="source video (.mp4/.gif/folder): DDIM-inverted to the starting latent")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--out", default="vidgen_sample.mp4", help=".mp4, .gif or a folder of PNGs")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the same model with the default (reference) modules; "
                             "on by default for the built-in model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames: expected >= 1, got {args.frames}")
    if args.steps is None:
        args.steps = 10 if args.model is None and args.arch == "tiny" else 50
    if args.compare is None:
        args.compare = args.model is None
    device, dtype = torch.device(args.device), resolve_dtype(args)
    try:
        model_dir = resolve_model_dir(args)
        if args.motion_adapter:
            video, tables = _sample_animatediff(args, model_dir, device, dtype)
        else:
            video, tables = _sample_video_model(args, model_dir, device, dtype)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vidgen sample: {exc}", file=sys.stderr)
        return 2
    for path in _save(video, args.out, args.fps):
        print(f"wrote {path}")
    if len(tables) == 1:
        print(next(iter(tables.values())).table())
    else:
        print_comparison(tables)
        if device.type == "cpu":
            print("(CPU: both columns run PyTorch; vidgen's ops fall back to their reference implementations, "
                  "which also keep the log-sum-exp for training. vidgen's kernels run on CUDA tensors.)")
    return 0
