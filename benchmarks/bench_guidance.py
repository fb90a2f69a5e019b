"""Benchmark the fused guidance step (GPU): CUDA library and Triton vs diffusers eager and torch.compile.

The peers run what a diffusers pipeline runs per denoising step: the CFG line
``uncond + w * (cond - uncond)`` then ``DDIMScheduler.step`` (eager, and the same Python code
under ``torch.compile``). Ours: ``vidgen.ops.guided_step`` forced onto each backend.

Sizes are AnimateDiff latents (B, 4, F, h, w): 512x512 16 frames (2x4x16x64x64) and larger;
fp16, bf16, fp32. Every row reports the median time, the effective bandwidth
(the minimal bytes: read x, cond, uncond, write x_prev) and its fraction of the device copy
bandwidth measured in the same run, and the speedups over both peers. Extra rows time our
op with guidance rescale (a second read for the statistics) and with in-kernel PYoCo noise.
At these sizes (2-4 MB at 512x512) every implementation is launch-bound, so each row also
reports ``host_us``: the host time per call issued back to back (``harness.host_us_per_call``),
what the step adds to every denoising step when the GPU is not the bottleneck.

Usage: ``python -m benchmarks.bench_guidance [--quick]``; results go to benchmarks/results/.
Goals on H100: >= 85% of copy bandwidth, >= 5x diffusers eager, >= 1.3x torch.compile.
"""
from __future__ import annotations

import argparse
import sys

from benchmarks import harness

SHAPES = [(2, 4, 16, 64, 64), (2, 4, 24, 96, 96), (4, 4, 32, 64, 64), (2, 4, 16, 128, 128)]
GUIDANCE_SCALE = 7.5


def make_scheduler():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(25)
    return scheduler


def diffusers_cfg_step(scheduler, x, cond, uncond, t):
    """What a diffusers pipeline runs per step, after the UNet."""
    noise_pred = uncond + GUIDANCE_SCALE * (cond - uncond)
    return scheduler.step(noise_pred, t, x, return_dict=False)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first shape only")
    args = parser.parse_args(argv)
    harness.require_cuda()
    import torch

    from vidgen.ops import guided_step, use_backend

    env = harness.environment()
    ceilings = harness.ceilings()
    print(f"copy bandwidth {ceilings['copy_gbs']:.0f} GB/s on {env.get('gpu')}")
    scheduler = make_scheduler()
    t = int(scheduler.timesteps[10])
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t, a_p = float(scheduler.alphas_cumprod[t]), float(scheduler.alphas_cumprod[prev])
    compiled_step = torch.compile(diffusers_cfg_step)
    rows = []
    for shape in SHAPES[:1] if args.quick else SHAPES:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            x, cond, uncond = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
            nbytes = 4 * x.numel() * x.element_size()
            reference = diffusers_cfg_step(scheduler, x.float(), cond.float(), uncond.float(), t)

            def ours(backend, **extra):
                def run():
                    with use_backend(backend):
                        return guided_step(x, cond, uncond, guidance_scale=GUIDANCE_SCALE, alpha_prod_t=a_t,
                                           alpha_prod_prev=a_p, **extra)
                return run

            candidates = {
                "diffusers_eager": lambda: diffusers_cfg_step(scheduler, x, cond, uncond, t),
                "torch_compile": lambda: compiled_step(scheduler, x, cond, uncond, t),
                "vidgen_cuda": ours("cuda"),
                "vidgen_triton": ours("triton"),
                "vidgen_cuda_rescale0.7": ours("cuda", guidance_rescale=0.7),
                "vidgen_triton_rescale0.7": ours("triton", guidance_rescale=0.7),
                "vidgen_cuda_eta1_progressive": ours("cuda", eta=1.0, noise_kind="progressive", noise_alpha=2.0,
                                                     seed=1),
                "vidgen_triton_eta1_progressive": ours("triton", eta=1.0, noise_kind="progressive",
                                                       noise_alpha=2.0, seed=1),
            }
            timings = {}
            for name, fn in candidates.items():
                row = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."), "impl": name}
                try:
                    out = fn()
                    if "rescale" not in name and "eta" not in name:
                        row["max_abs_diff_vs_fp32_eager"] = (out.float() - reference).abs().max().item()
                    row.update(harness.time_ms(fn))
                    row["host_us"] = harness.host_us_per_call(fn)
                except Exception as exc:  # a peer that fails is a result to report, not a crash
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(row)
                    print(row)
                    continue
                timings[name] = row["ms"]
                row.update(harness.bandwidth(nbytes, row["ms"], ceilings))
                rows.append(row)
            for row in rows[-len(candidates):]:
                if "ms" in row:
                    row["label"] = f"{row['impl']} {row['dtype']} {row['shape']}"
                    for peer in ("diffusers_eager", "torch_compile"):
                        if peer in timings:
                            row[f"speedup_vs_{peer}"] = timings[peer] / row["ms"]
                    print(f"{row['label']:>58}: {row['ms'] * 1e3:8.1f} us {row['gbs']:7.0f} GB/s "
                          f"{row['copy_fraction']:5.0%} of copy, {row['host_us']:6.1f} us host, "
                          f"x{row.get('speedup_vs_diffusers_eager', 0):.1f} "
                          f"vs eager, x{row.get('speedup_vs_torch_compile', 0):.2f} vs compile")
    stem = harness.write_results("guidance", rows, env, ceilings)
    plotted = [r for r in rows if r["impl"].startswith("vidgen") and "speedup_vs_diffusers_eager" in r]
    if plotted:
        harness.plot_speedups(stem, plotted, label_key="label", speedup_key="speedup_vs_diffusers_eager",
                              title="guided step: speedup over diffusers eager CFG + DDIMScheduler.step")
    print(f"wrote {stem}.csv/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
