"""End-to-end sampling latency and peak memory: vidgen against what a user runs without it.

    python -m benchmarks.bench_e2e [--quick] [--cases ...] [--compile | --no-compile]
                                   [--compile-budget-s S] [--steps N] [--repeats N] [--smoke]

Random-weight full-size architectures (no downloads), built by ``vidgen.default_model``, fp16,
512x512, DDIM, each case eager and under ``torch.compile`` on both sides (the default side:
``torch.compile`` of the whole UNet, as diffusers documents it; ``vidgen+compile``:
``vidgen.patch(..., compile=True)``, the UNet's repeated blocks compiled one by one):

* ``animatediff``: AnimateDiff (SD1.5 + a MotionAdapter), 16 frames, CFG 7.5, 25 steps:
  diffusers' default modules (``diffusers``) vs ``vidgen.patch`` (``vidgen``).
  Goal: >= 1.4x diffusers eager, >= 1.15x its torch.compile build.
* ``animatediff-free-noise``: the same pipeline with FreeNoise (``enable_free_noise``, windows of
  16 frames, stride 4, pyramid weights) making 64 frames, CFG 7.5: diffusers' FreeNoise blocks
  vs vidgen's fused motion module running every window as a frame-offset view.
* ``tune-a-video``: 8 and 24 frames, CFG 12.5, 50 steps: the reference formulation (gathered K/V
  on SDPA, permute copies; ``VideoUNet.use_vidgen_ops(False, False)``, ``reference``) vs vidgen.
  Goal: >= 2x with <= 0.7x the peak memory at 24 frames.
* ``svd``: Stable Video Diffusion image-to-video at its full size (UNet, temporal VAE, ViT-H image
  encoder; ``vidgen.default_model.svd_pipeline``), 576x1024, 14 and 25 frames (SVD / SVD-XT), 25
  Euler steps, guidance 1 -> 3 over the frames: diffusers vs ``vidgen.patch`` (temporal blocks,
  fused Euler step).
* ``video-adapter``: an SD1.5-size prior + a small video UNet, 8 frames, 50 steps: vidgen's
  batched composition and fused step vs the same in plain diffusers code (separate forwards,
  CFG arithmetic, ``DDIMScheduler.step``; ``plain diffusers``).

On CUDA, AnimateDiff and Tune-A-Video also run ``vidgen+cuda_graph``: vidgen with the UNet's
forward (AnimateDiff: ``vidgen.patch(pipe, cuda_graph=True)``) or the whole step (Tune-A-Video:
``sample_video(cuda_graph=True)``) replayed from CUDA graphs, for the launch-bound share.

Every implementation runs once to warm up (Triton and Inductor compilation, cuDNN's choices),
``--repeats`` times timed (the best is kept: ``seconds``), and once more for memory. Compiled
variants report their compilation separately: ``compile_seconds`` is the warm-up run's time
minus a timed run's. ``--compile-budget-s`` bounds the compilation spent in a run: once it is
used up, the remaining compiled variants are skipped and say so. A variant that fails (a
compiler error, an out-of-memory) is a row with ``error`` and no time, and the run goes on.

Outputs are compared: ``rel_l2`` is the relative L2 distance of the variant's final latents to
the default side's eager latents of the same case and frame count (same seed, same initial
noise), ``||x - x_default|| / ||x_default||`` in fp32.

Peak memory comes from a run of its own, untimed, since its hooks cost host time
(:class:`benchmarks.step_roles.LoopMemory`). The loop's maximum is set by whichever layer holds
the most at once (likely a ResNet block of the 64x64 up path, not the attention layers whose
gathered K/V and permute copies vidgen removes), so it is reported beside each role's own peak:

1. ``peak_gib``: the denoising loop's peak (CUDA's peak statistic is reset at the first UNet
   call, so text encoding and setup are out) above what is resident then (weights, embeddings,
   latents: ``resident_gib``);
2. for eager variants, each role's transient peak (``role_peak_gib_<role>``, e.g.
   ``role_peak_gib_temporal_attention``): the most memory one call of that role's modules
   allocated above what was allocated when it began, which sees the K/V and permute copies
   even when they do not set the loop's maximum.

``--quick`` (about 2-3 minutes on an H200, under 5 with model loading): every case and frame
count, 10 steps instead of 25/50, one timed repeat, eager only unless ``--compile`` is given (a
UNet's torch.compile takes 1-2 minutes per variant, four variants would not fit). ``--smoke``
runs every case on the tiny model with 2 steps on any device, eager only, to check the script;
its timings mean nothing and no result file is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from typing import Callable

import torch

from benchmarks import harness
from benchmarks.step_roles import ROLES, LoopMemory

CASES = ("animatediff", "tune-a-video", "video-adapter", "animatediff-free-noise", "svd")
DEFAULT_LABEL = {"animatediff": "diffusers", "tune-a-video": "reference", "video-adapter": "plain diffusers",
                 "animatediff-free-noise": "diffusers", "svd": "diffusers"}
# Variants timed twice: the second row shows the run-to-run spread of the same code.
AGAIN_CASES = ("animatediff", "tune-a-video")
# vidgen with the denoising step replayed from CUDA graphs (vidgen.patch(pipe, cuda_graph=True) for
# AnimateDiff, sample_video(cuda_graph=True) for Tune-A-Video): run last, on CUDA only.
GRAPH_SIDE = ("vidgen+cuda_graph", True, False)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run measures (from the command line, :func:`plan_from_args`)."""

    cases: tuple[str, ...]
    arch: str
    device: str
    dtype: torch.dtype
    size: int
    animatediff_frames: int
    tuneavideo_frames: tuple[int, ...]
    adapter_frames: int
    animatediff_steps: int
    tuneavideo_steps: int
    repeats: int
    compile: bool
    compile_budget_s: float
    write: bool
    free_noise: tuple[int, int, int] = (64, 16, 4)  # AnimateDiff+FreeNoise: frames, context length, stride
    svd_arch: str = "svd"  # vidgen.default_model.SVD_ARCHS
    svd_frames: tuple[int, ...] = (14, 25)
    svd_size: tuple[int, int] = (576, 1024)  # height, width
    svd_steps: int = 25


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, any device, eager; writes nothing")
    parser.add_argument("--quick", action="store_true",
                        help="10 steps, 1 repeat, eager only unless --compile (all cases and frame counts)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile on both sides (default: on, off with --quick/--smoke)")
    parser.add_argument("--compile-budget-s", type=float, default=600.0,
                        help="compilation time a run may spend; later compiled variants are skipped (default 600)")
    parser.add_argument("--steps", type=int, help="denoising steps of every case (default 25 AnimateDiff, 50 "
                                                  "Tune-A-Video and Video Adapter; 10 with --quick, 2 with --smoke)")
    parser.add_argument("--repeats", type=int, help="timed runs per variant, the best kept (default 2; 1 with "
                                                    "--quick/--smoke)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps: expected >= 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats: expected >= 1")
    if args.compile_budget_s < 0:
        parser.error("--compile-budget-s: expected >= 0")
    return args


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(cases=tuple(args.cases), arch="tiny", device="cuda" if torch.cuda.is_available() else "cpu",
                    dtype=torch.float32, size=64, animatediff_frames=4, tuneavideo_frames=(4,), adapter_frames=4,
                    animatediff_steps=args.steps or 2, tuneavideo_steps=args.steps or 2, repeats=args.repeats or 1,
                    compile=bool(args.compile), compile_budget_s=args.compile_budget_s, write=False,
                    free_noise=(6, 4, 2), svd_arch="tiny", svd_frames=(3,), svd_size=(32, 32),
                    svd_steps=args.steps or 2)
    ad_steps, tav_steps = (10, 10) if args.quick else (25, 50)
    return Plan(cases=tuple(args.cases), arch="sd15", device="cuda", dtype=torch.float16, size=512,
                animatediff_frames=16, tuneavideo_frames=(8, 24), adapter_frames=8,
                animatediff_steps=args.steps or ad_steps, tuneavideo_steps=args.steps or tav_steps,
                repeats=args.repeats or (1 if args.quick else 2),
                compile=not args.quick if args.compile is None else args.compile,
                compile_budget_s=args.compile_budget_s, write=True, svd_steps=args.steps or ad_steps)


# ----------------------------------------------------------------------------------------------
# Measuring one variant
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Variant:
    """One implementation of a case: ``enter``/``leave`` put the models into and out of it (patch,
    compile); ``run`` samples and returns the final latents; ``step_modules`` are the UNets as
    the loop calls them (a compiled wrapper included); ``role_models`` are the eager UNets whose
    modules get role memory hooks (none when compiled: hooks would break the compiled graph)."""

    impl: str
    compiled: bool
    enter: Callable[[], None]
    leave: Callable[[], None]
    run: Callable[[], torch.Tensor]
    step_modules: Callable[[], list[torch.nn.Module]]
    role_models: Callable[[], list[torch.nn.Module]]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


def role_field(role: str) -> str:
    return "role_peak_gib_" + role.replace(" ", "_").replace("-", "_").replace("(", "").replace(")", "")


def relative_l2(latents: torch.Tensor, reference: torch.Tensor) -> float:
    """``||latents - reference|| / ||reference||`` in fp32 (shapes must agree)."""
    if latents.shape != reference.shape:
        raise ValueError(f"latents: shape {tuple(latents.shape)} differs from the reference's {tuple(reference.shape)}")
    a, b = latents.detach().float(), reference.detach().float().to(latents.device)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def measure(variant: Variant, device: torch.device, repeats: int) -> tuple[dict, torch.Tensor]:
    """Warm-up, ``repeats`` timed runs, one memory run (CUDA): the row's numbers and the latents."""
    first_seconds, latents = _timed(variant.run, device)
    seconds = min(_timed(variant.run, device)[0] for _ in range(repeats))
    row = {"seconds": seconds, "first_run_seconds": first_seconds}
    if variant.compiled:
        row["compile_seconds"] = max(first_seconds - seconds, 0.0)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the allocator's cache is not what is measured; keeps runs independent
        with LoopMemory(variant.step_modules(), variant.role_models()) as memory:
            latents = variant.run()
        _synchronize(device)
        row["resident_gib"] = (memory.resident_bytes or 0) / 2**30
        row["peak_gib"] = None if memory.loop_peak_bytes is None else memory.loop_peak_bytes / 2**30
        row.update({role_field(role): peak / 2**30 for role, peak in memory.role_peak_bytes.items()})
    return row, latents


def run_variants(case: str, frames: int, size: int, steps: int, variants: list[Variant], device: torch.device,
                 plan: Plan, budget: dict) -> list[dict]:
    """Rows of every variant of one case at one frame count; compiled variants spend ``budget``."""
    rows, reference = [], None
    for variant in variants:
        row = {"case": case, "impl": variant.impl, "frames": frames, "size": size, "steps": steps,
               "compiled": variant.compiled, "seconds": None, "peak_gib": None}
        if variant.compiled and budget["spent_s"] >= plan.compile_budget_s:
            row["skipped"] = f"compile budget of {plan.compile_budget_s:.0f} s spent"
            rows.append(row)
            continue
        try:
            variant.enter()
            measured, latents = measure(variant, device, plan.repeats)
            row.update(measured)
            if reference is None and variant.impl == DEFAULT_LABEL[case]:
                reference = latents
            row["rel_l2"] = relative_l2(latents, reference) if reference is not None else None
        except Exception as exc:  # a variant that fails is a result to report, not the end of the run
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if variant.compiled:
                budget["spent_s"] += row.get("compile_seconds") or 0.0
            variant.leave()
            if variant.compiled:
                torch._dynamo.reset()  # the next compiled variant starts from a clean cache
        rows.append(row)
    return rows


def _sides(case: str, compile_: bool) -> list[tuple[str, bool, bool]]:
    """(impl label, vidgen side, compiled) in the order they run: the default side's eager first,
    as every other variant's latents are compared with it."""
    base = DEFAULT_LABEL[case]
    order = [(base, False, False), (f"{base}+compile", False, True), ("vidgen", True, False)]
    if case in AGAIN_CASES:
        order.append(("vidgen (again)", True, False))
    order.append(("vidgen+compile", True, True))
    return [side for side in order if compile_ or not side[2]]


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
def pipeline_variant(pipe, run: Callable[[], torch.Tensor], impl: str, patched: bool, compiled: bool,
                     graphed: bool = False) -> Variant:
    """One side of a diffusers pipeline's rows: eager or ``torch.compile``d UNet, patched by vidgen
    or not. vidgen's compile is regional (``vidgen.patch(compile=True)``: the UNet's repeated
    blocks); the diffusers side compiles the whole UNet, as its users do."""
    import vidgen

    eager_unet = pipe.unet

    def enter():
        if patched:
            vidgen.patch(pipe, cuda_graph=graphed, compile=compiled)
        elif compiled:
            pipe.unet = torch.compile(eager_unet)

    def leave():
        pipe.unet = eager_unet
        vidgen.unpatch(pipe)

    return Variant(impl, compiled, enter, leave, run, lambda: [pipe.unet], lambda: [] if compiled else [eager_unet])


def animatediff_rows(model_dir: str, device: torch.device, plan: Plan, budget: dict,
                     free_noise: bool = False) -> list[dict]:
    """The ``animatediff`` case, or with ``free_noise`` the ``animatediff-free-noise`` one (FreeNoise
    enabled before patching, ``plan.free_noise`` frames in its windows)."""
    from vidgen.default_model import animatediff_pipeline

    case = "animatediff-free-noise" if free_noise else "animatediff"
    pipe = animatediff_pipeline(model_dir, plan.dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    frames, steps = plan.animatediff_frames, plan.animatediff_steps
    if free_noise:
        frames, context_length, context_stride = plan.free_noise
        pipe.enable_free_noise(context_length=context_length, context_stride=context_stride)

    def run() -> torch.Tensor:
        return pipe("a red horse runs in the sky", num_frames=frames, height=plan.size, width=plan.size,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                    generator=torch.Generator(device).manual_seed(0)).frames

    variants = [pipeline_variant(pipe, run, *side) for side in _sides(case, plan.compile)]
    if device.type == "cuda" and not free_noise:
        variants.append(pipeline_variant(pipe, run, *GRAPH_SIDE, graphed=True))
    return run_variants(case, frames, plan.size, steps, variants, device, plan, budget)


def tuneavideo_rows(model_dir: str, device: torch.device, plan: Plan, budget: dict) -> list[dict]:
    import vidgen
    from vidgen.sampling import VideoModel, sample_video

    model = VideoModel.from_pretrained(model_dir, torch_dtype=plan.dtype, device=device)
    eager_unet = model.unet
    rows = []
    for frames in plan.tuneavideo_frames:
        def run(frames=frames, graphed=False) -> torch.Tensor:
            return sample_video(model, "a red horse runs in the sky", num_frames=frames, height=plan.size,
                                width=plan.size, num_inference_steps=plan.tuneavideo_steps, guidance_scale=12.5,
                                decode=False, progress=False, cuda_graph=graphed).latents

        def variant(impl: str, use_vidgen: bool, compiled: bool, graphed: bool = False) -> Variant:
            def enter():
                eager_unet.use_vidgen_ops(use_vidgen, use_vidgen)
                if compiled and use_vidgen:
                    vidgen.patch(eager_unet, compile=True)
                elif compiled:
                    model.unet = torch.compile(eager_unet)

            def leave():
                model.unet = eager_unet
                if vidgen.is_patched(eager_unet):
                    vidgen.unpatch(eager_unet)

            return Variant(impl, compiled, enter, leave, lambda: run(graphed=graphed), lambda: [model.unet],
                           lambda: [] if compiled else [eager_unet])

        variants = [variant(*side) for side in _sides("tune-a-video", plan.compile)]
        if device.type == "cuda":
            variants.append(variant(*GRAPH_SIDE, graphed=True))
        rows += run_variants("tune-a-video", frames, plan.size, plan.tuneavideo_steps, variants, device, plan, budget)
    eager_unet.use_vidgen_ops(True, True)
    return rows


def video_adapter_rows(prior_dir: str, small_dir: str, device: torch.device, plan: Plan, budget: dict) -> list[dict]:
    import vidgen
    from diffusers import DDIMScheduler

    from vidgen.sampling import VideoModel, encode_prompt, initial_noise, sample_video

    prior = VideoModel.from_pretrained(prior_dir, torch_dtype=plan.dtype, device=device)
    small = VideoModel.from_pretrained(small_dir, torch_dtype=plan.dtype, device=device)
    small.text_encoder, small.tokenizer, small.vae = prior.text_encoder, prior.tokenizer, prior.vae
    eager = {"prior": prior.unet, "small": small.unet}
    frames, steps, size = plan.adapter_frames, plan.tuneavideo_steps, plan.size

    def vidgen_run() -> torch.Tensor:
        return sample_video(small, "a robot arm picks a cube", num_frames=frames, height=size, width=size,
                            num_inference_steps=steps, guidance_scale=2.5, prior=prior.unet, prior_strength=0.1,
                            decode=False, progress=False).latents

    @torch.no_grad()
    def plain_run() -> torch.Tensor:
        """The composition as plain diffusers code: three forwards, eager arithmetic, scheduler.step
        (the same text, initial noise and timesteps as ``sample_video``)."""
        scheduler = DDIMScheduler.from_config(prior.scheduler.config)
        scheduler.set_timesteps(steps)
        cond, uncond = encode_prompt(small, ["a robot arm picks a cube", ""]).chunk(2)
        factor = 2 ** (len(prior.vae.config.block_out_channels) - 1)
        x = initial_noise((1, 4, frames, size // factor, size // factor), seed=0, device=device, dtype=plan.dtype)
        for t in scheduler.timesteps:
            eps_u = small.unet(x, t, uncond).sample
            eps_c = small.unet(x, t, cond).sample
            eps_p = prior.unet(x, t, cond).sample
            eps = eps_u + 2.5 * (eps_c + 0.1 * eps_p - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    def variant(impl: str, use_vidgen: bool, compiled: bool) -> Variant:
        def enter():
            for unet in eager.values():
                unet.use_vidgen_ops(use_vidgen, use_vidgen)
                if compiled and use_vidgen:
                    vidgen.patch(unet, compile=True)
            if compiled and not use_vidgen:
                prior.unet, small.unet = torch.compile(eager["prior"]), torch.compile(eager["small"])

        def leave():
            prior.unet, small.unet = eager["prior"], eager["small"]
            for unet in eager.values():
                if vidgen.is_patched(unet):
                    vidgen.unpatch(unet)

        return Variant(impl, compiled, enter, leave, vidgen_run if use_vidgen else plain_run,
                       lambda: [prior.unet, small.unet], lambda: [] if compiled else list(eager.values()))

    variants = [variant(*side) for side in _sides("video-adapter", plan.compile)]
    return run_variants("video-adapter", frames, size, steps, variants, device, plan, budget)


# Video Adapter's small model s, beside an SD1.5-size prior: the UNet2DConditionModel settings that
# differ from the prior's (it shares the prior's sample size and text width).
SMALL_ADAPTER_UNET = dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=8, norm_num_groups=32,
                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def svd_rows(device: torch.device, plan: Plan, budget: dict) -> list[dict]:
    """Stable Video Diffusion from one random image, at each of ``plan.svd_frames``."""
    import numpy as np
    from PIL import Image

    from vidgen.default_model import svd_pipeline

    pipe = svd_pipeline(plan.svd_arch, plan.dtype, device)
    pipe.set_progress_bar_config(disable=True)
    height, width = plan.svd_size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    rows = []
    for frames in plan.svd_frames:
        def run(frames=frames) -> torch.Tensor:
            return pipe(image, num_frames=frames, height=height, width=width, num_inference_steps=plan.svd_steps,
                        min_guidance_scale=1.0, max_guidance_scale=3.0, decode_chunk_size=frames,
                        output_type="latent", generator=torch.Generator(device).manual_seed(0)).frames

        variants = [pipeline_variant(pipe, run, *side) for side in _sides("svd", plan.compile)]
        rows += run_variants("svd", frames, width, plan.svd_steps, variants, device, plan, budget)
    return rows


def _small_adapter_model(sd_dir: str, out_dir: str) -> str:
    """A small video model sharing the prior's latent space and text width (Video Adapter's s)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    big = pipe.unet.config
    pipe.unet = UNet2DConditionModel(sample_size=big.sample_size, cross_attention_dim=big.cross_attention_dim,
                                     **SMALL_ADAPTER_UNET)
    pipe.save_pretrained(out_dir)
    return out_dir


def add_speedups(rows: list[dict]) -> None:
    """``speedup``: the default side's eager time over the row's, per case and frame count."""
    baselines = {(r["case"], r["frames"]): r["seconds"] for r in rows
                 if r["impl"] == DEFAULT_LABEL[r["case"]] and r.get("seconds")}
    for row in rows:
        baseline = baselines.get((row["case"], row["frames"]))
        row["speedup"] = baseline / row["seconds"] if baseline and row.get("seconds") else None


def run_benchmark(plan: Plan) -> list[dict]:
    from vidgen import default_model

    device = torch.device(plan.device)
    model_dir = default_model.ensure(plan.arch)
    budget = {"spent_s": 0.0}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "animatediff" in plan.cases:
            rows += animatediff_rows(model_dir, device, plan, budget)
        if "tune-a-video" in plan.cases:
            rows += tuneavideo_rows(model_dir, device, plan, budget)
        if "video-adapter" in plan.cases:
            small_dir = _small_adapter_model(model_dir, f"{tmp}/small")
            rows += video_adapter_rows(model_dir, small_dir, device, plan, budget)
        if "animatediff-free-noise" in plan.cases:
            rows += animatediff_rows(model_dir, device, plan, budget, free_noise=True)
        if "svd" in plan.cases:
            rows += svd_rows(device, plan, budget)
    add_speedups(rows)
    return rows


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def print_rows(rows: list[dict]) -> None:
    print(f"{'case':<22} {'impl':<24} {'F':>3} {'seconds':>8} {'speedup':>7} {'peak GiB':>8} {'resident':>8} "
          f"{'rel_l2':>9} {'compile s':>9}")
    for r in rows:
        note = r.get("error") or r.get("skipped") or ""
        print(f"{r['case']:<22} {r['impl']:<24} {r['frames']:>3} {_fmt(r.get('seconds'), '.3f', 8)} "
              f"{_fmt(r.get('speedup'), '.2f', 7)} {_fmt(r.get('peak_gib'), '.3f', 8)} "
              f"{_fmt(r.get('resident_gib'), '.3f', 8)} {_fmt(r.get('rel_l2'), '.2e', 9)} "
              f"{_fmt(r.get('compile_seconds'), '.1f', 9)} {note}")
        roles = [f"{role} {r[role_field(role)]:.3f}" for role in ROLES if r.get(role_field(role)) is not None]
        if roles:
            print(f"{'':<22} transient GiB by role: {', '.join(roles)}")


def main(argv=None) -> int:
    plan = plan_from_args(parse_args(argv))
    if plan.device == "cuda":
        harness.require_cuda()
    with torch.no_grad():
        rows = run_benchmark(plan)
    print_rows(rows)
    if not plan.write:
        print("smoke run: timings are not results; nothing written")
        return 0
    env = harness.environment()
    stem = harness.write_results("e2e", rows, env, harness.ceilings())
    plotted = [r for r in rows if r.get("speedup")]
    if plotted:
        for r in plotted:
            r["label"] = f"{r['case']} F={r['frames']} {r['impl']}"
        harness.plot_speedups(stem, plotted, label_key="label", speedup_key="speedup",
                              title=f"end to end ({env.get('gpu')})")
    print(f"results: {stem}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
