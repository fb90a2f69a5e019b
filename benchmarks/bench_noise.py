"""Correlated-noise generation on a GPU: vidgen's kernel vs torch.randn + the recurrence.

Peers: the same PYoCo math in eager PyTorch and under torch.compile. Reports GB/s of output
written (plus x0 read for add_noise) and the fraction of the device copy bandwidth measured
in the same run. Goal (H100): >= 80% of copy bandwidth for fp32 output and >= 3x eager.

The shapes are a sampler's latents (2x4x16x64x64: AnimateDiff 512x512, 16 frames; 2x4x24x96x96:
768x768, 24 frames); at 2-4 MB every implementation is launch-bound, so each row also reports
``host_us``: the host time per call issued back to back (``harness.host_us_per_call``), what
the op adds to every denoising step when the GPU is not the bottleneck.
"""
from __future__ import annotations

import argparse
import math

import torch

from benchmarks import harness
from vidgen.kernels.noise import mixing_coefficients
from vidgen.ops import add_noise, correlated_noise

SHAPES = [(2, 4, 16, 64, 64), (2, 4, 24, 96, 96), (8, 4, 32, 128, 128)]


def eager_noise(shape, kind, alpha, dtype):
    """What a user writes without vidgen: draw F + 1 frames with torch.randn, then mix."""
    keep, new = mixing_coefficients(kind, alpha)
    B, C, F, h, w = shape
    z = torch.randn(B, C, F + 1, h, w, device="cuda", dtype=torch.float32)
    if kind == "mixed":
        eps = keep * z[:, :, F:] + new * z[:, :, :F]
    else:
        frames = [z[:, :, 0]]
        for f in range(1, F):
            frames.append(keep * frames[-1] + new * z[:, :, f])
        eps = torch.stack(frames, 2)
    return eps.to(dtype)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first shape only")
    args = parser.parse_args(argv)
    harness.require_cuda()
    env, ceil = harness.environment(), harness.ceilings()
    compiled_noise = torch.compile(eager_noise, dynamic=False)
    rows = []
    for shape in SHAPES[:1] if args.quick else SHAPES:
        for kind, alpha in (("mixed", 1.0), ("progressive", 2.0)):
            for dtype in (torch.float32, torch.bfloat16):
                nbytes = math.prod(shape) * dtype.itemsize
                cases = {
                    "vidgen": lambda: correlated_noise(shape, kind=kind, alpha=alpha, seed=0, device="cuda", dtype=dtype),
                    "eager": lambda: eager_noise(shape, kind, alpha, dtype),
                    "torch.compile": lambda: compiled_noise(shape, kind, alpha, dtype),
                }
                timings = {name: harness.time_ms(fn) for name, fn in cases.items()}
                timings["vidgen (again)"] = harness.time_ms(cases["vidgen"])  # run-to-run noise
                host_us = {name: harness.host_us_per_call(fn) for name, fn in cases.items()}
                host_us["vidgen (again)"] = host_us["vidgen"]
                for name, t in timings.items():
                    rows.append({"op": "correlated_noise", "impl": name, "shape": "x".join(map(str, shape)),
                                 "kind": kind, "dtype": str(dtype)[6:], **t, "host_us": host_us[name],
                                 **harness.bandwidth(nbytes, t["ms"], ceil),
                                 "speedup_vs_eager": timings["eager"]["ms"] / t["ms"],
                                 "speedup_vs_compile": timings["torch.compile"]["ms"] / t["ms"]})
        x0 = torch.randn(shape, device="cuda", dtype=torch.float16)
        ac = torch.linspace(0.9991, 0.0047, 1000, device="cuda")
        ts = torch.randint(0, 1000, (shape[0],), device="cuda")
        noised = lambda: add_noise(x0, ts, ac, kind="progressive", alpha=2.0, seed=0)  # noqa: E731
        t = harness.time_ms(noised)
        rows.append({"op": "add_noise", "impl": "vidgen", "shape": "x".join(map(str, shape)), "kind": "progressive",
                     "dtype": "float16", **t, "host_us": harness.host_us_per_call(noised),
                     **harness.bandwidth(3 * x0.numel() * x0.element_size(), t["ms"], ceil)})
    stem = harness.write_results("noise", rows, env, ceil)
    vid = [r for r in rows if r["impl"] == "vidgen" and r["op"] == "correlated_noise"]
    harness.plot_speedups(stem, vid, label_key="shape", speedup_key="speedup_vs_eager",
                          title=f"correlated_noise vs eager ({env.get('gpu')})")
    print(f"copy bandwidth {ceil['copy_gbs']:.0f} GB/s, bf16 matmul {ceil['bf16_matmul_tflops']:.0f} TFLOP/s")
    for r in rows:
        print(f"{r['op']:<17} {r['impl']:<15} {r['shape']:<16} {r['kind']:<12} {r['dtype']:<9} "
              f"{r['ms']:8.3f} ms {r['gbs']:7.0f} GB/s {100 * r['copy_fraction']:5.1f}% copy "
              f"{r['host_us']:7.1f} us host/call")
    print(f"results: {stem}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
