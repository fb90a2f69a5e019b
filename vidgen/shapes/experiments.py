"""The experiments of ``docs/RESULTS.md``: each seed's claim tested on the moving-shapes model.

Stages, each writing into a work folder so that a rerun skips what is done:

1. ``base``: the VAE, the tokenizer and the text-to-image prior (:mod:`vidgen.shapes.training`).
2. Jobs, independent of each other, run two at a time in worker processes (one CPU thread each):

   * ``pyoco/<arch>-<noise>-<seed>``: a video model made from the prior (Tune-A-Video's inflation or
     an AnimateDiff motion adapter), fine-tuned on the training clips with i.i.d., mixed or
     progressive noise (PYoCo), sampled from the same kind of noise; and ``pyoco/zero-shot``, the
     inflated prior before any video training;
   * ``adapter/<seed>``: a small video model trained on one sub-domain only (blue shapes moving up,
     larger and faster than anything the prior saw), sampled alone, composed with the inflated
     progressive-noise video model of the same seed as its prior (Video Adapter), and the prior
     alone, on prompts inside and outside the sub-domain;
   * ``oneshot/<seed>``: Tune-A-Video's one-shot tuning of the inflated prior on one clip, then
     DDIM inversion of that clip and sampling with edited captions; against the untuned inflated
     prior from the same inversion, and the tuned model from noise (the poster's "Noise" vs
     "Latents").

Every job's scores come from :mod:`vidgen.shapes.scores` and land in ``<job>/result.json``; a few
of its videos in ``<job>/videos.pt`` for the figure.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import torch

from . import data, models, scores, training

DATA_SEED, PRIOR_DATA_SEED, REAL_SEED, ADAPTER_DATA_SEED = 1000, 1500, 2000, 3000
NOISES = ("iid", "mixed", "progressive")
# The Video Adapter sub-domain: blue shapes moving up, larger than any shape of the prior's clips.
DOMAIN_MOTION = data.Motion(size=(12.0, 14.0), speed=(1.5, 2.0))
DOMAIN = dict(colours=("blue",), directions=("up",))
# One-shot sources (one per seed) and what the edits change.
ONESHOT_SOURCES = ("a red square moves left", "a green circle moves right", "a yellow triangle moves down")
# The one-shot configurations: (model, captions, start), in the order the tables list them.
ONESHOT_CONFIGS = ("tuned, inverted source, source caption", "tuned, inverted source, edited captions",
                   "untuned, inverted source, edited captions", "tuned, from noise, edited captions")


@dataclass(frozen=True)
class Budget:
    """How much of everything: training steps, data, evaluation sizes, sampler settings."""

    seeds: tuple[int, ...] = (0, 1, 2)
    clips: int = 600                 # training clips of the video models; the VAE trains on their frames
    prior_images: int = 2400         # opening frames of as many clips: the prior's images
    vae_steps: int = 1000
    prior_steps: int = 1200
    prior_lr: float = 3e-3
    video_steps: int = 500
    video_batch: int = 4
    video_lr: float = 1e-3
    adapter_clips: int = 48
    adapter_steps: int = 300
    adapter_lr: float = 1e-3
    prior_strengths: tuple[float, ...] = (0.1, 0.5)
    tune_steps: int = 300
    tune_lr: float = 1e-3
    sample_steps: int = 20
    guidance: float = 4.0
    edit_guidance: float = 7.5
    real_per_caption: int = 10       # real clips per caption for the Frechet reference


FULL = Budget()
# Every stage with the fewest steps that run it: the pipeline's plumbing in seconds (tests).
SMOKE = Budget(seeds=(0,), clips=16, prior_images=16, vae_steps=2, prior_steps=2, video_steps=2, video_batch=2, adapter_clips=4,
               adapter_steps=2, prior_strengths=(0.5,), tune_steps=2, sample_steps=2, real_per_caption=2)


def budget_dict(budget: Budget) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(budget).items()}


# ----------------------------------------------------------------------------------------------
# Captions and reference data
# ----------------------------------------------------------------------------------------------
def eval_captions() -> list[data.Caption]:
    """Half of the 48 captions, balanced: each colour 6 times, each shape 8, each direction 6."""
    combos = [(c, s, d) for c in range(len(data.COLOURS)) for s in range(len(data.SHAPES))
              for d in range(len(data.DIRECTIONS))]
    return [data.Caption(list(data.COLOURS)[c], data.SHAPES[s], list(data.DIRECTIONS)[d])
            for c, s, d in combos if (c + s + d) % 2 == 0]


def adapter_captions() -> dict[str, list[data.Caption]]:
    """Prompts inside the sub-domain (blue, up; each shape 4 times) and outside it (other colours
    and directions, each shape 4 times)."""
    inside = [data.Caption("blue", shape, "up") for shape in data.SHAPES] * 4
    outside = [data.Caption(colour, shape, direction) for colour, direction in
               (("red", "left"), ("green", "right"), ("yellow", "down"), ("red", "down"))
               for shape in data.SHAPES]
    return {"in-domain": inside, "out-of-domain": outside}


def real_features(captions: list[data.Caption], per_caption: int, seed: int,
                  motion: data.Motion = data.DEFAULT_MOTION) -> torch.Tensor:
    """Track features of ``per_caption`` real clips of every caption: the Frechet reference."""
    specs = data.sample_specs(len(captions) * per_caption, seed, captions=captions, motion=motion)
    return scores.track_features(scores.report_videos(data.render(specs)))


def training_specs(budget: Budget) -> list[data.ClipSpec]:
    return data.sample_specs(budget.clips, DATA_SEED)


# ----------------------------------------------------------------------------------------------
# Stage 1: VAE, tokenizer, prior
# ----------------------------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _progress(name: str, steps: int):
    every = max(1, steps // 10)

    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == steps - 1:
            _log(f"{name}: step {step + 1}/{steps}, loss {loss:.4f}")
    return report


def build_base(work: str, budget: Budget) -> dict:
    """Train the VAE (on every frame of the training clips) and the prior (on the opening frames
    of other clips, with their captions), skipped when ``work/prior`` exists, and encode the
    training clips. Returns the paths of what later stages read.

    The prior sees opening frames: where a clip starts depends on where it goes (a shape that
    moves left starts on the right), which gives its cross-attention a reason to read the direction
    words, which the video models need. Its text encoder stays as initialised, frozen, as Stable
    Diffusion's CLIP encoder is: every word keeps an embedding of its own. Trained with the UNet,
    the encoder merged the four direction words (another direction changed a caption's states by
    6 %, another shape by 66 %) and the prior drew every direction's shape at the same place
    (:mod:`vidgen.shapes.diagnose` measures both)."""
    from safetensors.torch import save_file

    paths = {"prior": os.path.join(work, "prior"), "latents": os.path.join(work, "clip_latents.safetensors"),
             "tokenizer": os.path.join(work, "tokenizer")}
    if os.path.isfile(os.path.join(paths["prior"], "model_index.json")) and os.path.isfile(paths["latents"]):
        return paths
    torch.manual_seed(0)
    specs = training_specs(budget)
    clips = data.to_model_range(data.render(specs))                      # (N, F, 3, H, W)
    opening = data.sample_specs(budget.prior_images, PRIOR_DATA_SEED)
    opening_frames = data.to_model_range(data.render(opening, frames=1))[:, 0]
    started = time.perf_counter()
    vae = training.train_vae(torch.cat([clips.flatten(0, 1), opening_frames]), steps=budget.vae_steps, seed=0,
                             progress=_progress("vae", budget.vae_steps))
    _log(f"vae: {time.perf_counter() - started:.0f} s")
    tokenizer = models.build_tokenizer(paths["tokenizer"])
    started = time.perf_counter()
    unet, text_encoder = training.train_prior(training.encode_frames(vae, opening_frames),
                                              [str(s.caption) for s in opening], tokenizer,
                                              steps=budget.prior_steps, seed=0, lr=budget.prior_lr,
                                              train_text_encoder=False, progress=_progress("prior", budget.prior_steps))
    _log(f"prior: {time.perf_counter() - started:.0f} s")
    latents = training.encode_frames(vae, clips.flatten(0, 1))
    clip_latents = latents.unflatten(0, (len(specs), data.FRAMES)).transpose(1, 2).contiguous()  # (N, C, F, h, w)
    save_file({"latents": clip_latents}, paths["latents"] + ".tmp")
    models.save_model(paths["prior"], unet=unet.to(memory_format=torch.contiguous_format), vae=vae,
                      text_encoder=text_encoder, tokenizer_dir=paths["tokenizer"], scheduler=models.build_scheduler())
    os.replace(paths["latents"] + ".tmp", paths["latents"])
    return paths


# ----------------------------------------------------------------------------------------------
# Sampling and scoring
# ----------------------------------------------------------------------------------------------
def sample(model, captions: list[data.Caption], budget: Budget, *, seed: int, noise: str = "iid",
           guidance: float | None = None, prior=None, prior_strength: float = 0.0,
           source: torch.Tensor | None = None) -> torch.Tensor:
    """Videos ``(B, F, 3, H, W)`` in [0, 1] of ``captions`` through ``vidgen.sample_video``."""
    from ..sampling import sample_video

    result = sample_video(model, [str(c) for c in captions], num_frames=data.FRAMES, height=data.SIZE,
                          width=data.SIZE, num_inference_steps=budget.sample_steps,
                          guidance_scale=budget.guidance if guidance is None else guidance, noise=noise, seed=seed,
                          prior=prior, prior_strength=prior_strength, source_video=source, progress=False)
    return result.video


def _uint8(videos: torch.Tensor) -> torch.Tensor:
    return (videos.clamp(0, 1) * 255).round().to(torch.uint8)


def _write_json(path: str, value: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _losses_summary(losses: list[float]) -> dict:
    tail = max(1, len(losses) // 10)
    return {"first": sum(losses[:tail]) / tail, "last": sum(losses[-tail:]) / tail, "steps": len(losses)}


# ----------------------------------------------------------------------------------------------
# Stage 2 jobs
# ----------------------------------------------------------------------------------------------
def reference_job(work: str, budget: Budget, out: str) -> dict:
    """Scores of real clips and of real clips through the VAE (the ceiling of any model here)."""
    from diffusers import AutoencoderKL

    captions = eval_captions()
    reference = real_features(captions, budget.real_per_caption, REAL_SEED)
    vae = AutoencoderKL.from_pretrained(os.path.join(work, "prior"), subfolder="vae").eval()
    rows = {}
    for seed in budget.seeds:
        videos = data.render(data.sample_specs(len(captions), REAL_SEED + 1 + seed, captions=captions))
        with torch.no_grad():
            frames = data.to_model_range(videos).flatten(0, 1)
            decoded = vae.decode(vae.encode(frames).latent_dist.mean).sample
        through_vae = ((decoded + 1) / 2).clamp(0, 1).view_as(videos)
        rows[seed] = {"real": scores.score_videos(videos, captions, reference),
                      "real through the VAE": scores.score_videos(through_vae, captions, reference)}
        if seed == budget.seeds[0]:
            torch.save({"real": _uint8(videos[:4]), "real through the VAE": _uint8(through_vae[:4]),
                        "captions": [str(c) for c in captions[:4]]}, os.path.join(out, "videos.pt"))
    return {"experiment": "reference", "scores": {name: {str(s): rows[s][name] for s in rows}
                                                 for name in ("real", "real through the VAE")}}


def pyoco_job(work: str, budget: Budget, out: str, arch: str, noise: str, seed: int) -> dict:
    from safetensors.torch import load_file

    from ..sampling import VideoModel

    prior_dir = os.path.join(work, "prior")
    captions = eval_captions()
    reference = real_features(captions, budget.real_per_caption, REAL_SEED)
    started = time.perf_counter()
    if arch == "zero-shot":
        unet, losses = training.inflated_unet(prior_dir, seed), []
        noise = "iid"
    else:
        latents = load_file(os.path.join(work, "clip_latents.safetensors"))["latents"]
        train_captions = [str(s.caption) for s in training_specs(budget)]
        unet, losses = training.finetune_video(arch, prior_dir, latents, train_captions, os.path.join(out, "train"),
                                               noise=noise, steps=budget.video_steps, seed=seed,
                                               batch_size=budget.video_batch, lr=budget.video_lr)
    train_seconds = time.perf_counter() - started
    if arch != "zero-shot":
        unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    model = VideoModel.from_pretrained(prior_dir, unet=unet)
    started = time.perf_counter()
    videos = sample(model, captions, budget, seed=seed, noise=noise)
    sample_seconds = time.perf_counter() - started
    torch.save({"videos": _uint8(videos[:4]), "captions": [str(c) for c in captions[:4]]},
               os.path.join(out, "videos.pt"))
    return {"experiment": "pyoco", "arch": arch, "noise": noise, "seed": seed,
            "scores": scores.score_videos(videos, captions, reference), "losses": _losses_summary(losses) if losses else None,
            "train_seconds": train_seconds, "sample_seconds": sample_seconds}


def _write_clips(folder: str, specs: list[data.ClipSpec]) -> str:
    """Clips as folders of PNG frames plus a captions file: a ``vidgen train-adapter`` dataset."""
    from ..video_io import write_video

    os.makedirs(folder, exist_ok=True)
    videos = _uint8(data.render(specs)).permute(0, 1, 3, 4, 2).numpy()
    captions = {}
    for i, (spec, video) in enumerate(zip(specs, videos)):
        name = f"clip{i:04d}"
        write_video(os.path.join(folder, name), video)
        captions[name] = str(spec.caption)
    with open(os.path.join(folder, "captions.json"), "w") as f:
        json.dump(captions, f, indent=1)
    return os.path.join(folder, "captions.json")


def adapter_job(work: str, budget: Budget, out: str, seed: int) -> dict:
    from .. import VideoUNet
    from ..sampling import VideoModel
    from ..train import AdapterConfig, train_adapter

    prior_dir = os.path.join(work, "prior")
    specs = data.sample_specs(budget.adapter_clips, ADAPTER_DATA_SEED + seed, motion=DOMAIN_MOTION, **DOMAIN)
    captions_file = _write_clips(os.path.join(out, "data"), specs)
    started = time.perf_counter()
    result = train_adapter(prior_dir, os.path.join(out, "data"), os.path.join(out, "small"), captions=captions_file,
                           frames=data.FRAMES, config=AdapterConfig(channels=(16, 32), heads=2, norm_groups=8),
                           batch_size=budget.video_batch, noise="progressive", steps=budget.adapter_steps,
                           lr=budget.adapter_lr, seed=seed, device="cpu", progress=False, resume=True,
                           checkpoint_every=budget.adapter_steps)
    train_seconds = time.perf_counter() - started
    small = VideoModel.from_pretrained(os.path.join(out, "small"))
    prior_unet = VideoUNet.from_pretrained(os.path.join(work, "jobs", "pyoco", f"inflated-progressive-{seed}", "unet"))
    prior = VideoModel.from_pretrained(prior_dir, unet=prior_unet)
    configs = {"small model alone": (small, None, 0.0)}
    for strength in budget.prior_strengths:
        configs[f"small + prior, lambda {strength:g}"] = (small, prior_unet, strength)
    configs["prior alone"] = (prior, None, 0.0)
    results, keep = {}, {}
    for split, captions in adapter_captions().items():
        reference = real_features(captions, budget.real_per_caption, REAL_SEED + 7, DOMAIN_MOTION)
        for name, (model, prior_net, strength) in configs.items():
            videos = sample(model, captions, budget, seed=seed, noise="progressive", prior=prior_net,
                            prior_strength=strength)
            reports = scores.report_videos(videos)
            row = scores.score_videos(videos, captions, reference)
            row["size"] = _mean([r.size for r in reports])
            row["speed"] = _mean([max(abs(r.velocity[0]), abs(r.velocity[1])) for r in reports])
            results.setdefault(split, {})[name] = row
            keep[f"{split}: {name}"] = _uint8(videos[:2])
    torch.save({"videos": keep, "captions": {k: [str(c) for c in v[:2]] for k, v in adapter_captions().items()}},
               os.path.join(out, "videos.pt"))
    return {"experiment": "adapter", "seed": seed, "scores": results, "train_seconds": train_seconds,
            "losses": _losses_summary(result.losses),
            "domain": {"size": sum(DOMAIN_MOTION.size) / 2, "speed": sum(DOMAIN_MOTION.speed) / 2},
            "prior_data": {"size": sum(data.DEFAULT_MOTION.size) / 2, "speed": sum(data.DEFAULT_MOTION.speed) / 2}}


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN (videos without a shape)
    return sum(values) / len(values) if values else float("nan")


def edits_of(caption: data.Caption) -> list[data.Caption]:
    """Every other colour and shape, with the source's direction."""
    return [data.Caption(c, s, caption.direction) for c in data.COLOURS for s in data.SHAPES
            if (c, s) != (caption.colour, caption.shape)]


def oneshot_job(work: str, budget: Budget, out: str, seed: int) -> dict:
    from ..sampling import VideoModel
    from ..train import tune

    prior_dir = os.path.join(work, "prior")
    source_caption = data.parse_caption(ONESHOT_SOURCES[seed % len(ONESHOT_SOURCES)])
    spec = data.sample_specs(1, REAL_SEED + 100 + seed, captions=[source_caption])[0]
    _write_clips(os.path.join(out, "source"), [spec])
    clip = os.path.join(out, "source", "clip0000")
    started = time.perf_counter()
    result = tune(prior_dir, clip, str(source_caption), os.path.join(out, "tuned"), frames=data.FRAMES,
                  steps=budget.tune_steps, lr=budget.tune_lr, seed=seed, device="cpu", progress=False,
                  gradient_checkpointing=False, resume=True, checkpoint_every=budget.tune_steps)
    train_seconds = time.perf_counter() - started
    tuned = VideoModel.from_pretrained(os.path.join(out, "tuned"))
    torch.manual_seed(seed)
    untuned = VideoModel.from_pretrained(prior_dir)
    source = data.to_model_range(data.render([spec]))                  # (1, F, 3, H, W)
    truth = data.trajectory(spec)
    edits = edits_of(source_caption)
    configs = dict(zip(ONESHOT_CONFIGS, [(tuned, [source_caption], True), (tuned, edits, True),
                                         (untuned, edits, True), (tuned, edits, False)]))
    results, keep = {}, {"source": _uint8(data.render([spec]))}
    for name, (model, captions, inverted) in configs.items():
        videos = sample(model, captions, budget, seed=seed, guidance=budget.edit_guidance,
                        source=source if inverted else None)
        reports = scores.report_videos(videos)
        row = {**scores.caption_scores(reports, captions), **scores.consistency_scores(reports)}
        row["track_error"] = _mean([_track_error(v, truth) for v in videos])
        results[name] = row
        keep[name] = _uint8(videos[:1])
    torch.save({"videos": keep, "source_caption": str(source_caption), "edit_caption": str(edits[0])},
               os.path.join(out, "videos.pt"))
    return {"experiment": "oneshot", "seed": seed, "source": str(source_caption), "scores": results,
            "train_seconds": train_seconds, "losses": _losses_summary(result.losses)}


def _track_error(video: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean distance (pixels) between the detected box centres and the source's, over the frames
    holding a shape; the frame's size when none does."""
    detections = scores.detect(video)
    distances = [float(((d.x - x) ** 2 + (d.y - y) ** 2) ** 0.5)
                 for d, (x, y) in zip(detections, truth.tolist()) if d.present]
    return sum(distances) / len(distances) if distances else float(data.SIZE)


JOBS = {"reference": reference_job, "pyoco": pyoco_job, "adapter": adapter_job, "oneshot": oneshot_job}


def job_list(budget: Budget) -> list[tuple[str, str, dict]]:
    """(name, kind, arguments) of every stage-2 job, the long ones first."""
    jobs = [("reference", "reference", {})]
    for seed in budget.seeds:
        for arch in training.VIDEO_ARCHS:
            for noise in NOISES:
                jobs.append((f"pyoco/{arch}-{noise}-{seed}", "pyoco", dict(arch=arch, noise=noise, seed=seed)))
    jobs.append(("pyoco/zero-shot", "pyoco", dict(arch="zero-shot", noise="iid", seed=budget.seeds[0])))
    jobs += [(f"adapter/{seed}", "adapter", dict(seed=seed)) for seed in budget.seeds]
    jobs += [(f"oneshot/{seed}", "oneshot", dict(seed=seed)) for seed in budget.seeds]
    return jobs


def dependencies(name: str) -> list[str]:
    """Jobs whose output this one reads: a Video Adapter job composes with a PYoCo job's model."""
    if name.startswith("adapter/"):
        return [f"pyoco/inflated-progressive-{name.split('/')[1]}"]
    return []


def run_job(work: str, budget: Budget, name: str, kind: str, arguments: dict, threads: int = 1) -> dict:
    """Run one job in this process (``threads`` CPU threads) unless its result exists; returns the result."""
    out = os.path.join(work, "jobs", name)
    result_path = os.path.join(out, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    result = JOBS[kind](work, budget, out, **arguments)
    result["seconds"] = time.perf_counter() - started
    result["job"] = name
    _write_json(result_path, result)
    return result
