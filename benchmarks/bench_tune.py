"""Benchmark one Tune-A-Video tuning step (GPU): vidgen's kernels vs the reference formulation.

The step is the whole training step of ``vidgen tune`` (:func:`vidgen.train.loop.optimizer_step`
with :func:`vidgen.train.tune.diffusion_loss`): fused PYoCo forward diffusion, the inflated
SD1.5 UNet forward and backward under fp16 autocast with loss scaling, gradient clipping and
the AdamW update of the tuned parameters (``attn1.to_q``, ``attn2.to_q``, ``attn_temp``). The
UNet has SD1.5's architecture with random weights (no download), fp32 master weights.

Rows: 24 and 8 frames at 512x512 (64x64 latents), gradient checkpointing on and off, for

* ``vidgen``: frame (sparse-causal) and temporal attention on vidgen's fused kernels;
* ``reference``: the same model with ``use_vidgen_ops(False, False)``: Tune-A-Video's
  formulation (K/V gathered by copy, rearranges around the temporal attention) on PyTorch SDPA.

Each row: median step time (and 20/80th percentiles) and peak memory (total allocated during a
step, and the part above the resident weights + optimizer state). A configuration that runs
out of memory is recorded as such. Goal on H100: vidgen >= 1.5x faster, <= 0.6x the
peak memory of the reference.

Usage: ``python -m benchmarks.bench_tune [--frames 24 8] [--quick]``; results go to benchmarks/results/.
"""
from __future__ import annotations

import argparse

from benchmarks import harness

GOAL_SPEEDUP, GOAL_MEMORY = 1.5, 0.6


def build_unet():
    """SD1.5-architecture VideoUNet with random weights on the GPU; the temporal output
    projections randomised so the temporal path is not a zero branch."""
    import torch
    from diffusers import UNet2DConditionModel

    import vidgen
    from vidgen import default_model

    torch.manual_seed(0)
    unet = vidgen.inflate(UNet2DConditionModel(**default_model._CONFIGS["sd15"]["unet"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "attn_temp.to_out.0.weight" in name:
                param.normal_(0, 0.02)
    return unet.cuda()


def make_step(unet, frames: int, size: int, checkpointing: bool):
    """A closure running one full tuning step, and the state it updates."""
    import torch
    from diffusers import DDIMScheduler

    from vidgen.default_model import SD15_SCHEDULER
    from vidgen.train.checkpoint import step_generator
    from vidgen.train.loop import optimizer_step
    from vidgen.train.tune import diffusion_loss, trainable_parameter_names

    device = torch.device("cuda")
    unet.requires_grad_(False)
    params = [dict(unet.named_parameters())[n] for n in trainable_parameter_names(unet)]
    for param in params:
        param.requires_grad_(True)
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=3e-5, betas=(0.9, 0.999), weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    latent = size // 8
    gen = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 4, frames, latent, latent, device=device, generator=gen)
    text = torch.randn(1, 77, 768, device=device, generator=gen)
    alphas_cumprod = DDIMScheduler(**SD15_SCHEDULER).alphas_cumprod.to(device)
    counter = [0]

    def step():
        counter[0] += 1
        generator = step_generator(0, counter[0])
        optimizer_step(lambda: diffusion_loss(unet, latents, text, alphas_cumprod, generator),
                       params, optimizer, scaler, torch.float16, 1.0, device)

    return step, optimizer


def measure(unet, impl: str, frames: int, size: int, checkpointing: bool, quick: bool) -> dict:
    import torch

    unet.use_vidgen_ops(frame_attention=impl == "vidgen", temporal_attention=impl == "vidgen")
    row = {"impl": impl, "frames": frames, "size": size, "checkpointing": checkpointing}
    optimizer = None
    try:
        step, optimizer = make_step(unet, frames, size, checkpointing)
        step()  # optimizer state, autotuning, lazy tables
        step()
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_total_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["peak_above_resident_gib"] = (torch.cuda.max_memory_allocated() - resident) / 2**30
        row.update(harness.time_ms(step, warmup_ms=500 if quick else 2000, rep_ms=2000 if quick else 8000))
        row["oom"] = False
    except torch.OutOfMemoryError:
        row["oom"] = True
    finally:
        del optimizer
        unet.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[24, 8])
    parser.add_argument("--size", type=int, default=512, help="pixels (latents are size/8)")
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = parser.parse_args(argv)
    harness.require_cuda()

    env = harness.environment()
    ceilings = harness.ceilings()
    print(f"{env.get('gpu')}: copy {ceilings['copy_gbs']:.0f} GB/s, bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s")
    unet = build_unet()
    rows, summary = [], []
    print(f"{'frames':>6} {'ckpt':>5} {'impl':>10} {'ms':>10} {'peak GiB':>9} {'above res.':>10}")
    for frames in args.frames:
        for checkpointing in (True, False):
            pair = {}
            for impl in ("vidgen", "reference"):
                row = measure(unet, impl, frames, args.size, checkpointing, args.quick)
                rows.append(row)
                pair[impl] = row
                if row["oom"]:
                    print(f"{frames:>6} {str(checkpointing):>5} {impl:>10} {'out of memory':>31}")
                else:
                    print(f"{frames:>6} {str(checkpointing):>5} {impl:>10} {row['ms']:>10.1f} "
                          f"{row['peak_total_gib']:>9.2f} {row['peak_above_resident_gib']:>10.2f}")
            ours, ref = pair["vidgen"], pair["reference"]
            if not ours["oom"] and not ref["oom"]:
                speedup = ref["ms"] / ours["ms"]
                memory = ours["peak_total_gib"] / ref["peak_total_gib"]
                summary.append({"label": f"{frames}f ckpt={'on' if checkpointing else 'off'}", "frames": frames,
                                "checkpointing": checkpointing, "speedup": speedup, "memory_ratio": memory,
                                "meets_goal": speedup >= GOAL_SPEEDUP and memory <= GOAL_MEMORY})
                print(f"{'':>6} {'':>5} {'ratio':>10} {speedup:>9.2f}x {memory:>8.2f}x  "
                      f"(goal >= {GOAL_SPEEDUP}x time, <= {GOAL_MEMORY}x memory)")
    stem = harness.write_results("tune", rows + [{"summary": True, **s} for s in summary], env, ceilings)
    if summary:
        harness.plot_speedups(stem, summary, label_key="label", speedup_key="speedup",
                              title=f"Tune-A-Video step, SD1.5 {args.size}px: vidgen vs reference (SDPA)")
    print(f"results: {stem}.json/.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
