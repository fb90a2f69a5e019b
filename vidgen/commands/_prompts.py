"""``vidgen sample --prompts FILE``: one video per prompt, split across processes, resumable.

The file holds one prompt per line. A line may start with its own seed, ``SEED | prompt``;
otherwise its seed is ``--seed`` plus the prompt's index (0 for the first prompt), so every
video differs and a rerun reproduces it. Blank lines and lines starting with ``#`` are skipped.

Prompt i is written to ``--out`` with ``_i`` before the extension (``clips.mp4`` ->
``clips_0000.mp4``, ...), next to a ``.json`` record of what produced it. Under
``accelerate launch`` (or torchrun), process r of W samples the prompts whose index is r mod W,
so every prompt has exactly one owner and the video names do not depend on W. Each video is
written under a temporary name and renamed when complete, then its record is written: a rerun
skips every prompt whose video and matching record exist, and redoes the rest (an interrupted
run, a changed prompt or setting).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass

import torch

from ._args import SEED_LIMIT, UsageError
from ._models import load_animatediff, load_video_models, resolve_dtype, resolve_model_dir

_SEEDED = re.compile(r"^\s*(\d+)\s*\|\s*(.*)$")
# The settings a video depends on: a record that differs in any of them is redone.
_SETTINGS = ("model", "arch", "frame_mode", "dtype", "motion_adapter", "prior", "prior_strength", "frames", "steps",
             "guidance", "noise", "noise_alpha", "video", "height", "width")


@dataclass(frozen=True)
class PromptJob:
    index: int   # position among the file's prompts: names the output
    line: int    # 1-based line number in the file, for messages
    prompt: str
    seed: int


def read_prompts(path: str, base_seed: int) -> list[PromptJob]:
    """The prompts of ``path``; raises :class:`UsageError` naming ``--prompts`` and the line."""
    if not os.path.isfile(path):
        raise UsageError(f"--prompts: {path} is not a file (expected one prompt per line)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts: cannot read {path}: {exc}") from None
    jobs = []
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        seeded = _SEEDED.match(text)
        if seeded:
            seed, prompt = int(seeded.group(1)), seeded.group(2).strip()
            if seed >= SEED_LIMIT:
                raise UsageError(f"--prompts: {path} line {number}: seed {seed} is not below 2**62")
            if not prompt:
                raise UsageError(f"--prompts: {path} line {number}: a seed with no prompt after '|'")
        else:
            prompt = text.strip()
            seed = base_seed + len(jobs)
            if seed >= SEED_LIMIT:
                raise UsageError(f"--prompts: {path} line {number}: --seed + prompt index is not below 2**62")
        jobs.append(PromptJob(index=len(jobs), line=number, prompt=prompt, seed=seed))
    if not jobs:
        raise UsageError(f"--prompts: {path} holds no prompt (blank lines and # comments are skipped)")
    return jobs


def output_path(out: str, index: int, count: int) -> str:
    """``out`` with the prompt's zero-padded index before its extension (a folder: at the end)."""
    stem, extension = os.path.splitext(out)
    return f"{stem}_{index:0{max(4, len(str(count - 1)))}d}{extension}"


def _record_path(video_path: str) -> str:
    return os.path.splitext(video_path)[0] + ".json"


def _record(job: PromptJob, args) -> dict:
    return {**asdict(job), "settings": {name: getattr(args, name, None) for name in _SETTINGS}}


def _same_video(saved: dict, wanted: dict) -> bool:
    # The line number is left out: moving a prompt within the file does not change its video.
    return all(saved.get(key) == wanted.get(key) for key in ("index", "prompt", "seed", "settings"))


def finished(video_path: str, record: dict) -> bool:
    """Whether a previous run wrote this video, with the same prompt, seed and settings."""
    if not os.path.exists(video_path):
        return False
    try:
        with open(_record_path(video_path), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and _same_video(saved, record)


def write_finished(video_path: str, video: torch.Tensor, fps: int, record: dict) -> None:
    """Write one (F, 3, H, W) [0, 1] video and then its record, each under a hidden temporary
    name renamed when complete: a killed run leaves nothing a rerun would take for finished."""
    from ..video_io import write_video

    folder, name = os.path.split(os.path.abspath(video_path))
    os.makedirs(folder, exist_ok=True)
    _remove(_record_path(video_path))  # an old record must not vouch for the new video
    stem, extension = os.path.splitext(name)
    partial = os.path.join(folder, f".{stem}-partial{extension}")  # same format: the extension is kept
    _remove(partial)
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    write_video(partial, frames, fps=fps)
    _remove(video_path)
    os.replace(partial, video_path)
    partial_record = os.path.join(folder, f".{stem}-partial.json")
    with open(partial_record, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(partial_record, _record_path(video_path))


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


# ----------------------------------------------------------------------------------------------
# Sampling the prompts of this process
# ----------------------------------------------------------------------------------------------
def check(args) -> list[PromptJob]:
    """What ``--prompts`` needs before a model loads; raises :class:`UsageError` naming the flag."""
    if getattr(args, "latents", None):
        raise UsageError("--latents: one starting latent for many prompts is not supported with --prompts "
                         "(each prompt starts from its own seed's noise)")
    return read_prompts(args.prompts, args.seed)


def _process() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process as ``accelerate launch`` and torchrun set them
    in the environment; (0, 1, 0) when not launched. The prompts are split by index alone, so no
    process group is needed (nothing is exchanged between processes)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    world = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    if not 0 <= rank < world:
        raise UsageError(f"--prompts: the launcher set RANK={rank} outside WORLD_SIZE={world}")
    return rank, world, read("LOCAL_RANK", rank)


def _device_for(requested: str, local_rank: int, world: int) -> torch.device:
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None and world > 1:
        return torch.device("cuda", local_rank % torch.cuda.device_count())  # one GPU per process
    return device


def _video_model_sampler(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """Tune-A-Video / LAMP / Video Adapter: the model loads once, then one call per prompt."""
    from ..sampling import sample_video
    from ..video_io import frames_to_tensor

    model, prior, height, width = load_video_models(args, model_dir, device, dtype)
    source = None
    if args.video:  # read once before any model loaded (sample's argument checks), else here
        frames = getattr(args, "source_frames", None)
        if frames is None:
            from ._args import read_video_for

            frames = read_video_for("--video", args.video, args.frames)
        source = frames_to_tensor(frames, size=(height, width))[None].to(device)

    def sample(job: PromptJob) -> torch.Tensor:
        return sample_video(model, job.prompt, num_frames=args.frames, height=height, width=width,
                            num_inference_steps=args.steps, guidance_scale=args.guidance, noise=args.noise,
                            noise_alpha=args.noise_alpha, seed=job.seed, source_video=source, prior=prior,
                            prior_strength=args.prior_strength, progress=not args.quiet).video[0]

    return sample


def _animatediff_sampler(args, model_dir: str, device: torch.device, dtype: torch.dtype):
    """AnimateDiff: the pipeline loads and is patched once, then one call per prompt."""
    from ..integration.patch import patch
    from ..sampling import initial_noise

    pipe, height, width = load_animatediff(args, model_dir, device, dtype)
    patch(pipe)
    shape = (1, pipe.unet.config.in_channels, args.frames, height // pipe.vae_scale_factor,
             width // pipe.vae_scale_factor)

    def sample(job: PromptJob) -> torch.Tensor:
        latents = initial_noise(shape, kind=args.noise, alpha=args.noise_alpha, seed=job.seed, device=device,
                                dtype=dtype)
        return pipe(job.prompt, num_frames=args.frames, height=height, width=width,
                    num_inference_steps=args.steps, guidance_scale=args.guidance, latents=latents,
                    output_type="pt").frames[0]

    return sample


def run(args, jobs: list[PromptJob]) -> int:
    """Sample this process's share of ``jobs`` (skipping finished ones); returns the exit status."""
    rank, world, local_rank = _process()
    args.device = str(_device_for(args.device, local_rank, world))
    device, dtype = torch.device(args.device), resolve_dtype(args)
    mine = [job for job in jobs if job.index % world == rank]
    todo = []
    for job in mine:
        path = output_path(args.out, job.index, len(jobs))
        if finished(path, _record(job, args)):
            print(f"skipped {path} (finished before: {job.prompt!r}, seed {job.seed})")
        else:
            todo.append((job, path))
    if todo:  # a process with nothing left to do loads no model
        model_dir = resolve_model_dir(args)
        build = _animatediff_sampler if args.motion_adapter else _video_model_sampler
        sample = build(args, model_dir, device, dtype)
        for job, path in todo:
            write_finished(path, sample(job), args.fps, _record(job, args))
            print(f"wrote {path} ({job.prompt!r}, seed {job.seed})")
    where = f"process {rank} of {world}: " if world > 1 else ""
    print(f"{where}{len(todo)} video(s) written, {len(mine) - len(todo)} already finished, "
          f"{len(jobs)} prompt(s) in {args.prompts}")
    return 0
