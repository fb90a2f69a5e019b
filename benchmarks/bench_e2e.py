"""End-to-end sampling latency and peak memory: vidgen against what a user runs without it.

Random-weight full-size architectures (no downloads), built by ``vidgen.default_model``:

* AnimateDiff (SD1.5 + a MotionAdapter), 16 frames, 512x512, CFG 7.5, 25 DDIM steps, fp16:
  diffusers' default modules vs ``vidgen.patch``, eager and under ``torch.compile``.
  Goal (H100): >= 1.4x diffusers' default, >= 1.15x its torch.compile build.
* Tune-A-Video, 8 and 24 frames, 512x512, 50 steps: the reference formulation (gathered K/V on
  SDPA, permute copies; ``VideoUNet.use_vidgen_ops(False, False)``) vs vidgen.
  Goal (H100): >= 2x with <= 0.7x the peak memory.
* Video Adapter: an SD1.5-size prior + a small video UNet, vidgen's batched composition and
  fused step vs the same in plain diffusers code (separate forwards, CFG arithmetic,
  ``DDIMScheduler.step``).

``--smoke`` runs every case on the tiny model with 2 steps, on any device, to check the script;
its timings mean nothing and no result file is written.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks import harness


def _timed(fn, device: torch.device) -> tuple[float, int, object]:
    """(seconds, peak bytes above the start, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else 0
    return seconds, peak, result


def _best_of(fn, device, repeats: int) -> tuple[float, int]:
    _timed(fn, device)  # warm-up: Triton/Inductor compilation, cuDNN autotuning
    runs = [_timed(fn, device) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def animatediff_rows(model_dir, device, dtype, frames, size, steps, repeats, with_compile=True) -> list[dict]:
    import vidgen
    from vidgen.default_model import animatediff_pipeline
    from vidgen.patching import is_patched

    pipe = animatediff_pipeline(model_dir, dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a red horse runs in the sky", num_frames=frames, height=size, width=size,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                    generator=torch.Generator(device).manual_seed(0)).frames

    rows = []
    for label, patched, compiled in (("diffusers", False, False), ("diffusers+compile", False, True),
                                     ("vidgen", True, False), ("vidgen (again)", True, False),
                                     ("vidgen+compile", True, True)):
        if compiled and not with_compile:
            continue
        if patched and not is_patched(pipe):
            vidgen.patch(pipe)
        unet = pipe.unet
        if compiled:
            pipe.unet = torch.compile(unet)
        seconds, peak = _best_of(run, device, repeats)
        pipe.unet = unet
        rows.append({"case": "animatediff", "impl": label, "frames": frames, "size": size, "steps": steps,
                     "seconds": seconds, "peak_gib": peak / 2**30})
    vidgen.unpatch(pipe)
    return rows


def tuneavideo_rows(model_dir, device, dtype, frame_counts, size, steps, repeats) -> list[dict]:
    from vidgen.sampling import VideoModel, sample_video

    model = VideoModel.from_pretrained(model_dir, torch_dtype=dtype, device=device)
    rows = []
    for frames in frame_counts:
        def run():
            return sample_video(model, "a red horse runs in the sky", num_frames=frames, height=size, width=size,
                                num_inference_steps=steps, guidance_scale=12.5, decode=False, progress=False)

        for label, use_vidgen in (("reference", False), ("vidgen", True), ("vidgen (again)", True)):
            model.unet.use_vidgen_ops(use_vidgen, use_vidgen)
            seconds, peak = _best_of(run, device, repeats)
            rows.append({"case": "tune-a-video", "impl": label, "frames": frames, "size": size, "steps": steps,
                         "seconds": seconds, "peak_gib": peak / 2**30})
    return rows


def video_adapter_rows(prior_dir, small_dir, device, dtype, frames, size, steps, repeats) -> list[dict]:
    from diffusers import DDIMScheduler

    from vidgen.sampling import VideoModel, encode_prompt, initial_noise, sample_video

    prior = VideoModel.from_pretrained(prior_dir, torch_dtype=dtype, device=device)
    small = VideoModel.from_pretrained(small_dir, torch_dtype=dtype, device=device)
    small.text_encoder, small.tokenizer, small.vae = prior.text_encoder, prior.tokenizer, prior.vae

    def vidgen_run():
        return sample_video(small, "a robot arm picks a cube", num_frames=frames, height=size, width=size,
                            num_inference_steps=steps, guidance_scale=2.5, prior=prior.unet, prior_strength=0.1,
                            decode=False, progress=False)

    @torch.no_grad()
    def plain_run():
        """The composition as plain diffusers code: three forwards, eager arithmetic, scheduler.step."""
        scheduler = DDIMScheduler.from_config(prior.scheduler.config)
        scheduler.set_timesteps(steps)
        cond, uncond = encode_prompt(small, ["a robot arm picks a cube", ""]).chunk(2)
        factor = 2 ** (len(prior.vae.config.block_out_channels) - 1)
        x = initial_noise((1, 4, frames, size // factor, size // factor), seed=0, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps_u = small.unet(x, t, uncond).sample
            eps_c = small.unet(x, t, cond).sample
            eps_p = prior.unet(x, t, cond).sample
            eps = eps_u + 2.5 * (eps_c + 0.1 * eps_p - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    rows = []
    for label, fn, use_vidgen in (("plain diffusers", plain_run, False), ("vidgen", vidgen_run, True)):
        for unet in (prior.unet, small.unet):
            unet.use_vidgen_ops(use_vidgen, use_vidgen)
        seconds, peak = _best_of(fn, device, repeats)
        rows.append({"case": "video-adapter", "impl": label, "frames": frames, "size": size, "steps": steps,
                     "seconds": seconds, "peak_gib": peak / 2**30})
    return rows


def _small_adapter_model(sd_dir: str, out_dir: str) -> str:
    """A small video model sharing the prior's latent space and text width (Video Adapter's s)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    big = pipe.unet.config
    pipe.unet = UNet2DConditionModel(sample_size=big.sample_size, block_out_channels=(64, 128),
                                     layers_per_block=1, cross_attention_dim=big.cross_attention_dim,
                                     attention_head_dim=8, norm_num_groups=32,
                                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe.save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    from vidgen import default_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, any device; writes nothing")
    parser.add_argument("--quick", action="store_true", help="fewer steps (AnimateDiff 10, Tune-A-Video 10)")
    parser.add_argument("--cases", nargs="+", default=["animatediff", "tune-a-video", "video-adapter"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.smoke:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype, arch, size, repeats = torch.float32, "tiny", 64, 1
        ad_steps = tav_steps = 2
        ad_frames, tav_frames = 4, (4,)
    else:
        harness.require_cuda()
        device, dtype, arch, size, repeats = torch.device("cuda"), torch.float16, "sd15", 512, args.repeats
        ad_steps, tav_steps = (10, 10) if args.quick else (25, 50)
        ad_frames, tav_frames = 16, (8, 24)
    model_dir = default_model.ensure(arch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "animatediff" in args.cases:
            rows += animatediff_rows(model_dir, device, dtype, ad_frames, size, ad_steps, repeats,
                                    with_compile=not args.smoke)
        if "tune-a-video" in args.cases:
            rows += tuneavideo_rows(model_dir, device, dtype, tav_frames, size, tav_steps, repeats)
        if "video-adapter" in args.cases:
            small_dir = _small_adapter_model(model_dir, f"{tmp}/small")
            rows += video_adapter_rows(model_dir, small_dir, device, dtype, tav_frames[0], size, tav_steps, repeats)
    baselines = {("animatediff", r["frames"]): r["seconds"] for r in rows if r["impl"] == "diffusers"}
    baselines.update({(r["case"], r["frames"]): r["seconds"] for r in rows
                      if r["impl"] in ("reference", "plain diffusers")})
    for r in rows:
        r["speedup"] = baselines[(r["case"], r["frames"])] / r["seconds"]
        print(f"{r['case']:<14} {r['impl']:<18} F={r['frames']:<3} {r['seconds']:8.3f} s  "
              f"{r['peak_gib']:6.2f} GiB  {r['speedup']:5.2f}x")
    if args.smoke:
        print("smoke run: timings are not results; nothing written")
        return 0
    env = harness.environment()
    stem = harness.write_results("e2e", rows, env, harness.ceilings())
    harness.plot_speedups(stem, rows, label_key="impl", speedup_key="speedup", title=f"end to end ({env.get('gpu')})")
    print(f"results: {stem}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
