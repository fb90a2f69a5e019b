"""``vidgen sample``: text-to-video with a Tune-A-Video/LAMP model, AnimateDiff, or Video Adapter; image-to-video with Stable Video Diffusion.

``--image IMG --model SVD_FOLDER`` animates an image with a Stable Video Diffusion folder (told
apart by its model_index.json); the image is read before any model loads.

With no ``--model``, a built-in model runs the whole path: the trained moving-shapes model
(``--arch shapes``, the default: "a red square moves left"; its prompts use its grammar's words
only), or a random-weight SD layout (``--arch tiny``, or ``sd15`` for the full SD1.5
architecture). ``--compare`` (on by default then) also runs it with the reference PyTorch
formulation of the same model: both are warmed up, then timed in rounds of alternating order, so
the per-stage table shows vidgen against the default modules on identical weights and inputs,
with the speedup's median and range over the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from .. import _timing, default_model
from ..video_io import frames_to_tensor, write_video
from . import _args, _prompts
from ._args import UsageError
from ._models import (add_model_arguments, check_model_arguments, check_steps, check_vocabulary, is_svd_folder,
                      load_animatediff, load_svd, load_video_models, resolve_dtype, resolve_model_dir)

DEFAULT_FRAMES = 8
DEFAULT_GUIDANCE = 12.5
SVD_MAX_GUIDANCE = 3.0  # the Stable Video Diffusion pipeline's own max_guidance_scale


# ----------------------------------------------------------------------------------------------
# Inverted latents: what ``vidgen invert --out`` writes and ``vidgen sample --latents`` reads
# ----------------------------------------------------------------------------------------------
def save_latents(path: str, latents: torch.Tensor) -> str:
    """x_T under the key ``latents``: safetensors for .safetensors, ``torch.save`` of a dict for .pt/.pth."""
    _args.check_latents_path("--out", path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tensors = {"latents": latents.contiguous().cpu()}
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, path)
    else:
        torch.save(tensors, path)
    return path


def load_latents(flag: str, path: str) -> torch.Tensor:
    """The (B, C, F, h, w) latents of a file written by ``vidgen invert`` (B = 1 there)."""
    _args.check_exists(flag, path)
    _args.check_latents_path(flag, path)
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: whatever the loader raises, it is the file
        raise UsageError(f"{flag}: cannot read {path}: {exc}") from None
    latents = tensors.get("latents") if isinstance(tensors, dict) else None
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or not latents.is_floating_point():
        raise UsageError(f"{flag}: {path} holds no (B, C, F, h, w) float tensor under the key 'latents' "
                         "(as vidgen invert writes)")
    return latents


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
def _save(result_video: torch.Tensor, out: str, fps: int) -> list[str]:
    """Write (B, F, 3, H, W) [0, 1] videos; several videos get _0, _1... suffixes."""
    frames = (result_video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    if len(frames) == 1:
        return [write_video(out, frames[0], fps=fps)]
    stem, ext = os.path.splitext(out)
    return [write_video(f"{stem}_{i}{ext}", video, fps=fps) for i, video in enumerate(frames)]


class _SecondsTable:
    """Per-stage seconds of one run (the StageTimes interface, for paths timed here)."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def table(self) -> str:
        rows = [f"{'stage':<16}{'seconds':>10}"] + [f"{s:<16}{v:>10.3f}" for s, v in self.seconds.items()]
        return "\n".join(rows + [f"{'total':<16}{sum(self.seconds.values()):>10.3f}"])


def _from_latents(model, args, latents: torch.Tensor, prior, decode=None) -> tuple[torch.Tensor, _SecondsTable]:
    """Denoise the given x_T (an inversion) with the prompt and decode it (with ``decode``, else the whole
    video here), timed per stage."""
    from ..sampling import decode_latents, denoise, encode_prompt

    sync = _timing.device_synchronizer(latents.device) or (lambda: None)
    seconds = {}

    def stage(name, fn):
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        seconds[name] = time.perf_counter() - start
        return value

    videos = latents.shape[0]
    embeds = stage("text encoding", lambda: encode_prompt(model, [args.prompt, ""]))
    cond, uncond = (e.expand(videos, -1, -1) for e in embeds.split(1))
    x0 = stage("denoising", lambda: denoise(
        model.unet, latents, cond, uncond, scheduler=model.scheduler, num_inference_steps=args.steps,
        guidance_scale=args.guidance, prior=prior, prior_strength=args.prior_strength, progress=not args.quiet))
    video = stage("decoding", lambda: decode(x0) if decode is not None else decode_latents(model, x0))
    return video, _SecondsTable(seconds)


def _sharded_decode(model):
    """--frame-parallel: x_0 (B, C, F, h, w) -> frames (B, F, 3, H, W), each process decoding its share of the
    frames, then one all-gather (the runtime's decode wrapper, which gathers the frames along dim 2)."""
    from ..integration.frame_parallel import FrameParallel, resolve_group
    from ..sampling import decode_latents

    decode = FrameParallel(resolve_group(True, False), False).decode_latents(
        lambda x0: decode_latents(model, x0).transpose(1, 2))
    return lambda x0: decode(x0).transpose(1, 2)


def _sample_video_model(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    from ..integration.video_unet import VideoUNet
    from ..sampling import sample_video

    if args.frame_parallel:
        device = _init_frame_parallel(args, device)
    model, prior, height, width = load_video_models(args, model_dir, device, dtype)
    if args.frame_parallel:
        _shard_video_unets(args, [model.unet] + ([prior] if prior is not None else []))
    source = frames_to_tensor(args.source_frames, size=(height, width))[None].to(device) \
        if args.video else None
    latents = None
    if args.latents:
        latents = args.latents_tensor.to(device=device, dtype=dtype)
        if latents.shape[1] != model.unet.config.in_channels:
            raise UsageError(f"--latents: {args.latents} has {latents.shape[1]} latent channels; the model's UNet "
                             f"takes {model.unet.config.in_channels}")

    decode = _sharded_decode(model) if args.frame_parallel else None
    sync = _timing.device_synchronizer(device) or (lambda: None)

    def run():
        if latents is not None:
            return _from_latents(model, args, latents, prior, decode)
        result = sample_video(model, args.prompt, num_frames=args.frames, height=height, width=width,
                              num_inference_steps=args.steps, guidance_scale=args.guidance, noise=args.noise,
                              noise_alpha=args.noise_alpha, seed=args.seed, source_video=source, prior=prior,
                              prior_strength=args.prior_strength, decode=decode is None, progress=not args.quiet)
        if decode is None:
            return result.video, result.times
        start = time.perf_counter()
        video = decode(result.latents)
        sync()
        result.times.seconds["decoding"] = time.perf_counter() - start
        return video, result.times

    if not (args.compare and isinstance(model.unet, VideoUNet)):
        video, times = run()
        return video, {"vidgen": [times]}, None
    unets = [model.unet] + ([prior] if isinstance(prior, VideoUNet) else [])

    def with_ops(use_vidgen: bool):
        def side():
            for unet in unets:
                unet.use_vidgen_ops(frame_attention=use_vidgen, temporal_attention=use_vidgen)
            return run()
        return side

    return _timed_pair(with_ops(True), with_ops(False), "reference", args.rounds)


def _shard_video_unets(args, unets: list[torch.nn.Module]) -> None:
    """--frame-parallel for a video model: its UNets (and --prior's) run on each process's frames. Every
    process first takes rank 0's weights, so the processes run one model even where their folders
    differ (an SD folder inflated on load is already the same model everywhere: load_video_model)."""
    import torch.distributed as dist

    import vidgen

    for unet in unets:
        with torch.no_grad():
            for tensor in (*unet.parameters(), *unet.buffers()):
                dist.broadcast(tensor, src=0)
        vidgen.patch(unet, frame_parallel=True, guidance_parallel=args.guidance_parallel)


def _sample_animatediff(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    from ..sampling import initial_noise

    if args.frame_parallel:
        device = _init_frame_parallel(args, device)
    pipe, height, width = load_animatediff(args, model_dir, device, dtype)
    parallel = {"frame_parallel": True, "guidance_parallel": args.guidance_parallel} if args.frame_parallel else {}
    latents = initial_noise((1, pipe.unet.config.in_channels, args.frames, height // pipe.vae_scale_factor,
                             width // pipe.vae_scale_factor), kind=args.noise, alpha=args.noise_alpha,
                            seed=args.seed, device=device, dtype=dtype)
    return _patched_against_diffusers(args, pipe, device, parallel, lambda: pipe(
        args.prompt, num_frames=args.frames, height=height, width=width, num_inference_steps=args.steps,
        guidance_scale=args.guidance, latents=latents.clone(), output_type="pt"))


def _sample_svd(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """Stable Video Diffusion from ``--image``: guidance grows from 1 at the first frame to --guidance
    at the last (the pipeline's per-frame scale); the starting noise comes from --seed."""
    if args.frame_parallel:
        device = _init_frame_parallel(args, device)
    pipe, height, width = load_svd(args, model_dir, device, dtype)
    parallel = {"frame_parallel": True, "guidance_parallel": args.guidance_parallel} if args.frame_parallel else {}
    return _patched_against_diffusers(args, pipe, device, parallel, lambda: pipe(
        args.image_rgb, num_frames=args.frames, height=height, width=width, num_inference_steps=args.steps,
        min_guidance_scale=1.0, max_guidance_scale=args.guidance, fps=args.fps,
        generator=torch.Generator(device).manual_seed(args.seed), output_type="pt"))


def _patched_against_diffusers(args, pipe, device: torch.device, patch_options: dict, call):
    """A diffusers pipeline's ``call()`` patched by vidgen; with --compare also unpatched, timed in
    alternating rounds. Returns (video, tables, comparison or None) like the other samplers."""
    import vidgen

    sync = _timing.device_synchronizer(device) or (lambda: None)

    def run(use_vidgen: bool):
        def side():
            vidgen.patch(pipe, **patch_options) if use_vidgen else vidgen.unpatch(pipe)
            sync()
            start = time.perf_counter()
            out = call()
            sync()
            return out.frames, _SecondsTable({"pipeline": time.perf_counter() - start})
        return side

    if not args.compare:
        video, times = run(True)()
        return video, {"vidgen": [times]}, None
    return _timed_pair(run(True), run(False), "diffusers", args.rounds)


def _timed_pair(vidgen_run, reference_run, reference_name: str, rounds: int):
    """Both sides warmed up, then ``rounds`` alternating timed rounds (see :mod:`vidgen._timing`).

    Each side returns ``(video, per-stage times)``; returns vidgen's video, every round's times
    per side, and the comparison of total seconds."""
    def total(side):
        video, times = side()
        return (video, times), sum(times.seconds.values())

    tables = {"vidgen": [], reference_name: []}

    def recording(name, side):
        def run():
            video, times = side()
            tables[name].append(times)
            return video, times
        return run

    comparison = _timing.compare(recording(reference_name, reference_run), recording("vidgen", vidgen_run),
                                 rounds=rounds, seconds=total)
    warm = {name: runs[-rounds:] for name, runs in tables.items()}  # drop the warm-up runs
    return comparison.candidate_result[0], warm, comparison


def print_comparison(tables: dict, comparison: _timing.Comparison | None = None, device_type: str = "cpu") -> None:
    """Median seconds per stage over the timed rounds of each side, and vidgen's speedup."""
    names = list(tables)
    medians = {name: {} for name in names}
    for name, runs in tables.items():
        for stage in dict.fromkeys(s for t in runs for s in t.seconds):
            medians[name][stage] = statistics.median(t.seconds.get(stage, 0.0) for t in runs)
    stages = list(dict.fromkeys(s for m in medians.values() for s in m))
    reference = names[1] if len(names) == 2 else None
    print(f"\n{'stage':<16}" + "".join(f"{n:>12}" for n in names) + ("   speedup" if reference else ""))
    for stage in stages + ["total"]:
        values = [sum(medians[n].values()) if stage == "total" else medians[n].get(stage) for n in names]
        cells = "".join(f"{v:>12.3f}" if v is not None else f"{'-':>12}" for v in values)
        ratio = f"{values[1] / values[0]:>9.2f}x" if reference and all(values) else ""
        if stage == "total" and comparison is not None:
            ratio = f"{comparison.speedup:>9.2f}x"  # the median of the rounds' ratios, as summarised below
        print(f"{stage:<16}{cells}{ratio}")
    if comparison is not None:
        print(f"seconds: medians of {len(comparison.ratios)} timed rounds per side; "
              f"vidgen speedup {comparison.summary()}")
        if device_type == "cpu":
            print(_timing.CPU_CAVEAT)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _args.parser("vidgen sample", __doc__)
    add_model_arguments(parser)
    parser.add_argument("--motion-adapter", help="a local diffusers MotionAdapter folder: sample with AnimateDiff")
    parser.add_argument("--prior", help="Video Adapter: a local folder of the large prior model (same VAE/text encoder)")
    parser.add_argument("--prior-strength", type=_args.non_negative_float, default=0.1,
                        help="Video Adapter: the prior's weight lambda")
    parser.add_argument("--prompt", default="a red square moves left", help="what the video shows")
    parser.add_argument("--prompts", metavar="FILE",
                        help="one video per line of FILE ('SEED | prompt', or a prompt seeded --seed + its index), "
                             "written as --out with _0000, _0001... before the extension; split across the "
                             "processes of accelerate launch; a rerun skips finished videos (replaces --prompt; "
                             "--compare does not apply)")
    parser.add_argument("--frames", type=_args.positive_int, default=None,
                        help=f"video length (default: {DEFAULT_FRAMES}; with --latents, the file's)")
    parser.add_argument("--steps", type=_args.positive_int, default=None,
                        help="sampling steps (default: 50; the built-in models: their own, 10 for tiny)")
    parser.add_argument("--guidance", type=_args.non_negative_float, default=None,
                        help=f"classifier-free guidance scale w, 1: no guidance (default: {DEFAULT_GUIDANCE}; the "
                             f"built-in shapes model: its own); with --image, the last frame's (default: "
                             f"{SVD_MAX_GUIDANCE}), growing from 1 at the first")
    parser.add_argument("--image", help="image-to-video: the image a Stable Video Diffusion --model animates "
                                        "(replaces --prompt)")
    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the starting noise")
    parser.add_argument("--noise", choices=("iid", "mixed", "progressive"), default=None,
                        help="starting noise, PYoCo: mixed, progressive (default: iid; the built-in shapes model: "
                             "the kind it was trained with)")
    parser.add_argument("--noise-alpha", type=_args.non_negative_float, default=None,
                        help="PYoCo alpha (default: 1 mixed, 2 progressive)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--video", help="source video (.mp4/.gif/folder): DDIM-inverted to the starting latent")
    start.add_argument("--latents", help="start from these latents x_T, as written by vidgen invert "
                                         "(.safetensors/.pt; sets --frames, --height and --width)")
    parser.add_argument("--out", default="vidgen_sample.mp4",
                        help=".mp4 or .gif file, or a folder (no extension) of one PNG per frame")
    parser.add_argument("--fps", type=_args.positive_int, default=8, help="frames per second of the video file")
    parser.add_argument("--frame-parallel", action="store_true",
                        help="one video over all processes of `torchrun --nproc-per-node N` (or accelerate "
                             "launch), each denoising its share of the frames (AnimateDiff, Stable Video Diffusion, "
                             "or a Tune-A-Video / LAMP video model); the same video as one process (NCCL on GPUs, "
                             "gloo on CPU)")
    parser.add_argument("--guidance-parallel", action="store_true",
                        help="with --frame-parallel on an even number of processes: the conditional and "
                             "unconditional branches of guidance on different halves of them")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the same model with the default (reference) modules "
                             "(default: on for the built-in model)")
    parser.add_argument("--rounds", type=_args.positive_int, default=3,
                        help="--compare: timed rounds per side, in alternating order, after one warm-up run of each")
    return parser


def resolve_sampling_defaults(args) -> None:
    """Fill --steps, --guidance and --noise left unset: the built-in model's own settings, else
    Tune-A-Video's (50 steps, guidance 12.5, i.i.d. noise)."""
    own = {}
    if args.model is None:
        try:
            own = default_model.sampling_defaults(args.arch)
        except OSError as exc:
            raise UsageError(f"--arch: {exc}") from None
    args.steps = args.steps or own.get("steps", 50)
    args.guidance = own.get("guidance", DEFAULT_GUIDANCE) if args.guidance is None else args.guidance
    args.noise = args.noise or own.get("noise", "iid")


def check_arguments(args) -> None:
    """Everything knowable before a model loads; raises :class:`UsageError` naming the flag."""
    check_model_arguments(args, image_to_video=True)
    args.svd = is_svd_folder(args.model)
    if args.image or args.svd:
        _check_image_to_video(args)  # before the text-to-video defaults fill --noise and --guidance
    resolve_sampling_defaults(args)
    check_steps(args)
    _args.check_video_out("--out", args.out)
    if args.svd:
        if args.frame_parallel or args.guidance_parallel:
            check_frame_parallel(args)
        return
    if not args.prompts:
        check_vocabulary(args, [("--prompt", args.prompt)])
    if args.motion_adapter:
        _args.check_config_folder("--motion-adapter", args.motion_adapter, "a local diffusers MotionAdapter folder")
        if args.model is None and args.arch == "shapes":
            raise UsageError("--motion-adapter: goes on an image model (--model DIR, or --arch tiny or sd15); the "
                             "built-in shapes model is a video model already")
        ignored = [flag for flag, value in (("--video", args.video), ("--latents", args.latents),
                                            ("--prior", args.prior)) if value]
        if ignored:
            raise UsageError(f"{', '.join(ignored)}: not used by AnimateDiff sampling (--motion-adapter)")
    if args.prior:
        _args.check_model_folder("--prior", args.prior)
    args.frames_given = args.frames is not None
    args.frames = args.frames or DEFAULT_FRAMES
    args.source_frames = _args.read_video_for("--video", args.video, args.frames) if args.video else None
    args.latents_tensor = None
    if args.latents:
        latents = load_latents("--latents", args.latents)
        _, _, frames, h, w = latents.shape
        given = {"--frames": (args.frames if args.frames_given else None, frames),
                 "--height": (args.height, h * _args.LATENT_FACTOR), "--width": (args.width, w * _args.LATENT_FACTOR)}
        for flag, (asked, found) in given.items():
            if asked is not None and asked != found:
                raise UsageError(f"{flag}: {asked} asked for, but --latents {args.latents} holds {found}")
        args.frames, args.height, args.width = frames, h * _args.LATENT_FACTOR, w * _args.LATENT_FACTOR
        args.latents_tensor = latents
    if args.frame_parallel or args.guidance_parallel:  # after --latents, which sets the frame count
        check_frame_parallel(args)


def check_frame_parallel(args) -> None:
    """--frame-parallel/--guidance-parallel before any model loads: the launcher's processes and the frames."""
    if not args.frame_parallel:
        raise UsageError("--guidance-parallel: splits the processes of --frame-parallel; pass --frame-parallel too")
    if args.prompts:
        raise UsageError("--frame-parallel: spreads one video over the processes, --prompts spreads videos over "
                         "them; use one of the two")
    if args.compare:
        raise UsageError("--compare: not with --frame-parallel (every process would time both sides)")
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "")
    if not (world.isdigit() and rank.isdigit()):
        raise UsageError("--frame-parallel: needs a launcher that starts one process per rank and sets WORLD_SIZE "
                         "and RANK: torchrun --nproc-per-node N -m vidgen.cli sample ... (or accelerate launch)")
    world, rank = int(world), int(rank)
    if not 0 <= rank < world:
        raise UsageError(f"--frame-parallel: the launcher set RANK={rank} outside WORLD_SIZE={world}")
    if args.guidance_parallel and world % 2:
        raise UsageError(f"--guidance-parallel: needs an even number of processes, WORLD_SIZE={world}")
    sharing = world // 2 if args.guidance_parallel else world
    if sharing > args.frames:
        raise UsageError(f"--frame-parallel: {sharing} processes share the {args.frames} frames of "
                         f"{'--latents' if args.latents else '--frames'}; "
                         "at most one process per frame")
    args.rank = rank


def _init_frame_parallel(args, device: torch.device) -> torch.device:
    """The process group of --frame-parallel (NCCL on GPUs, gloo on CPU) and this process's device."""
    import datetime

    import torch.distributed as dist

    if device.type == "cuda" and device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", args.rank))
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A rank that fails or hangs ends the others' collectives within the timeout, not never.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return device


def _check_image_to_video(args) -> None:
    """--image with a Stable Video Diffusion --model, and none of the text-to-video options."""
    if not args.image:
        raise UsageError(f"--image: {args.model} is a Stable Video Diffusion folder, which animates an image; "
                         "give --image")
    if not args.svd:
        raise UsageError("--image: image-to-video needs a Stable Video Diffusion --model folder (its "
                         f"model_index.json names {_args.SVD_PIPELINE}), got "
                         + (f"{args.model}" if args.model else "the built-in text-to-video model"))
    text_only = [flag for flag, value in (("--motion-adapter", args.motion_adapter), ("--prior", args.prior),
                                          ("--video", args.video), ("--latents", args.latents),
                                          ("--prompts", args.prompts), ("--noise", args.noise is not None),
                                          ("--noise-alpha", args.noise_alpha is not None)) if value]
    if text_only:
        raise UsageError(f"{', '.join(text_only)}: not used by image-to-video sampling (--image)")
    args.image_rgb = _args.read_image("--image", args.image)
    args.guidance = SVD_MAX_GUIDANCE if args.guidance is None else args.guidance
    if args.frames is None:  # the model's own length (14 for SVD, 25 for SVD-XT)
        config = _args.check_config_folder("--model", os.path.join(args.model, "unet"), "a diffusers UNet folder")
        args.frames = config.get("num_frames", DEFAULT_FRAMES)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare is None:
        args.compare = args.model is None and not args.frame_parallel
    try:
        check_arguments(args)
        jobs = _prompts.check(args) if args.prompts else None
        if jobs:
            check_vocabulary(args, [(f"--prompts: {args.prompts} line {job.line}", job.prompt) for job in jobs])
    except UsageError as exc:
        return _args.fail(parser, exc)
    if jobs is not None:
        try:
            with _args.quiet_libraries(args.quiet):
                return _prompts.run(args, jobs)
        except (UsageError, OSError, ValueError) as exc:  # OSError: a model file missing or unreadable
            return _args.fail(parser, exc)
    device, dtype = torch.device(args.device), resolve_dtype(args)
    try:
        with _args.quiet_libraries(args.quiet):
            if args.svd:
                video, tables, comparison = _sample_svd(args, args.model, device, dtype)
            else:
                run = _sample_animatediff if args.motion_adapter else _sample_video_model
                video, tables, comparison = run(args, resolve_model_dir(args), device, dtype)
    except (UsageError, OSError, ValueError) as exc:  # OSError: a model file missing or unreadable
        return _args.fail(parser, exc)
    if getattr(args, "rank", 0):  # frame-parallel: every process holds the video, the first writes it
        return 0
    for path in _save(video, args.out, args.fps):
        print(f"wrote {path}")
    if comparison is None:
        print(tables["vidgen"][0].table())
    else:
        print_comparison(tables, comparison, device.type)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
