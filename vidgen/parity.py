"""Output parity: the same prompt and seed through diffusers' default modules and through vidgen.

For each model kind the decoded videos of both runs are compared frame by frame (PSNR in dB
on [0, 1] pixels, max abs difference) and timed, and, given a local CLIP folder, both get the
CLIP metrics of :mod:`vidgen.eval`, so a user sees "same video, N x faster" in one table.

Kinds: ``tune-a-video`` (the inflated UNet on its reference formulation vs vidgen's kernels),
``animatediff`` (``AnimateDiffPipeline`` before and after ``vidgen.patch``, with a
random-weight motion adapter sized to the model) and ``text2video-zero``
(``TextToVideoZeroPipeline``'s cross-frame attention before and after ``vidgen.patch``).
"""
from __future__ import annotations

import statistics

import torch

from . import _timing

KINDS = ("tune-a-video", "animatediff", "text2video-zero")


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """PSNR (dB) of each frame of two (F, 3, H, W) videos in [0, 1]; identical frames give inf."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return [float("inf") if m == 0 else float(10 * torch.log10(1 / m)) for m in mse]


def _tune_a_video_runs(model_dir, prompt, seed, frames, steps, device, dtype):
    from .sampling import VideoModel, sample_video

    model = VideoModel.from_pretrained(model_dir, torch_dtype=dtype, device=device)

    def run(use_vidgen: bool):
        model.unet.use_vidgen_ops(use_vidgen, use_vidgen)
        return sample_video(model, prompt, num_frames=frames, num_inference_steps=steps, seed=seed,
                            progress=False).video[0]

    return lambda: run(False), lambda: run(True)


def _animatediff_runs(model_dir, prompt, seed, frames, steps, device, dtype):
    from . import patch, unpatch
    from .default_model import animatediff_pipeline

    pipe = animatediff_pipeline(model_dir, dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(use_vidgen: bool):
        (patch if use_vidgen else unpatch)(pipe)
        return pipe(prompt, num_frames=frames, num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                    generator=torch.Generator(device).manual_seed(seed)).frames[0]

    return lambda: run(False), lambda: run(True)


def _text2video_zero_runs(model_dir, prompt, seed, frames, steps, device, dtype):
    from diffusers import TextToVideoZeroPipeline

    from . import patch, unpatch

    pipe = TextToVideoZeroPipeline.from_pretrained(model_dir, torch_dtype=dtype, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def run(use_vidgen: bool):
        (patch if use_vidgen else unpatch)(pipe)
        # t0/t1: the motion-dynamics window of Text2Video-Zero, inside the few steps a parity run takes
        images = pipe(prompt, video_length=frames, height=size, width=size, num_inference_steps=steps,
                      t0=0, t1=max(steps - 1, 1), generator=torch.Generator(device).manual_seed(seed),
                      output_type="pt").images
        return torch.as_tensor(images).permute(0, 3, 1, 2) if images.shape[-1] == 3 else torch.as_tensor(images)

    return lambda: run(False), lambda: run(True)


def parity_report(model_dir: str, *, kinds=KINDS, prompt: str = "a red horse runs in the sky", seed: int = 0,
                  frames: int = 8, steps: int = 10, device="cpu", dtype=torch.float32,
                  clip_dir: str | None = None, rounds: int = 3) -> list[dict]:
    """One row per model kind: per-frame PSNR, max abs difference, both timings and CLIP metrics.

    Timings: one untimed warm-up run of each side, then ``rounds`` rounds in alternating order
    (:func:`vidgen._timing.compare`); the row holds each side's median seconds and the median
    and range of the per-round speedups."""
    device = torch.device(device)
    builders = {"tune-a-video": _tune_a_video_runs, "animatediff": _animatediff_runs,
                "text2video-zero": _text2video_zero_runs}
    rows = []
    for kind in kinds:
        if kind not in builders:
            raise ValueError(f"kinds: expected names from {', '.join(KINDS)}, got {kind!r}")
        default_run, vidgen_run = builders[kind](model_dir, prompt, seed, frames, steps, device, dtype)
        timing = _timing.compare(default_run, vidgen_run, rounds=rounds,
                                 seconds=_timing.wall_clock(synchronize=_timing.device_synchronizer(device)))
        default_video, vidgen_video = timing.reference_result, timing.candidate_result
        psnr = psnr_per_frame(default_video, vidgen_video)
        row = {"kind": kind, "frames": frames, "steps": steps, "dtype": str(dtype).replace("torch.", ""),
               "device": str(device), "psnr_per_frame": psnr, "min_psnr": min(psnr),
               "max_abs_diff": float((default_video.double() - vidgen_video.double()).abs().max()),
               "default_seconds": statistics.median(timing.reference_seconds),
               "vidgen_seconds": statistics.median(timing.candidate_seconds), "rounds": rounds,
               "speedup": timing.speedup, "speedup_range": list(timing.spread)}
        if clip_dir:
            from .eval import clip_scores

            def uint8(video):
                return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

            for name, video in (("default", default_video), ("vidgen", vidgen_video)):
                scores = clip_scores({name: uint8(video)}, clip_dir, prompt, device=device)
                row[f"{name}_text_alignment"] = scores["text_alignment"]
                row[f"{name}_frame_consistency"] = scores["frame_consistency"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Seconds are medians over the timed rounds; the speedup is the median per-round ratio and its range."""
    lines = [f"{'model':<16}{'min PSNR dB':>12}{'max |diff|':>12}{'default s':>11}{'vidgen s':>10}{'speedup':>9}"
             f"{'range':>14}"]
    for r in rows:
        low, high = r["speedup_range"]
        lines.append(f"{r['kind']:<16}{r['min_psnr']:>12.1f}{r['max_abs_diff']:>12.2e}{r['default_seconds']:>11.2f}"
                     f"{r['vidgen_seconds']:>10.2f}{r['speedup']:>8.2f}x{f'{low:.2f}-{high:.2f}x':>14}")
        if "vidgen_text_alignment" in r:
            lines.append(f"{'':<16}CLIP alignment {r['default_text_alignment']:.2f} -> {r['vidgen_text_alignment']:.2f}, "
                         f"consistency {r['default_frame_consistency']:.2f} -> {r['vidgen_frame_consistency']:.2f}")
    return "\n".join(lines)


__all__ = ["KINDS", "format_table", "parity_report", "psnr_per_frame"]
