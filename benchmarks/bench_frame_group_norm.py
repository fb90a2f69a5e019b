"""vidgen's fused norms and feed-forward against the implementations a user would otherwise run, on a GPU.

Shapes are the real ones at 512x512 (latent 64x64, the four UNet levels 64x64/32x32/16x16/8x8
with C = 320/640/1280/1280, 32 groups, batch 2 for classifier-free guidance):

* ``tune-a-video``: the inflated ResNet blocks' 5-D GroupNorm + SiLU, 8 and 24 frames (eps 1e-5);
* ``animatediff-motion``: a motion module's input GroupNorm (no SiLU, eps 1e-6), 16 frames.

Peers, each on the image layout ``(B*F, C, h, w)`` a UNet holds and returning it:

* ``torch_eager``: what diffusers does, ``nn.GroupNorm`` on the permuted ``(B, C, F, h, w)`` video,
  SiLU, permuted back (the permutes are copies: ``group_norm`` wants its channels second);
* ``torch_compile``: the same function under ``torch.compile`` (Inductor, default mode), which
  fuses the permutes, the statistics and the SiLU as far as it can;
* ``vidgen``: ``vidgen.ops.frame_group_norm`` on the image layout (no copies).

And the GEGLU feed-forward (``--ops geglu``): diffusers' ``GEGLU`` projection K -> 2 x 4K of
AnimateDiff's feed-forwards at 512x512, 16 frames, the four levels, and Stable Video Diffusion's top
level at 576x1024, 14 frames; peers ``torch_eager`` (``F.linear``, ``chunk``, ``gelu(gate) * value``:
cuBLAS, then a kernel reading the 2 x 4K-wide projection back), ``torch_compile`` of the same, and
``vidgen``'s ``vidgen.ops.geglu`` (one matmul with the GELU and product in its epilogue). Its rows
add the matmul rate (``matmul_fraction`` of the run's bf16 matmul ceiling; fwd+bwd counts the
forward's FLOPs three times, as autograd's backward of the projection does; vidgen's backward
spends a fourth recomputing the projection).

And a transformer block's output projections with their residual adds (``--ops linear_residual``):
the feed-forward's last Linear (4C -> C) and the attention's ``to_out[0]`` (C -> C) at AnimateDiff's
levels, the feed-forward's at Stable Video Diffusion's top level; peers ``torch_eager``
(``F.linear(x, W, b) + residual``: cuBLAS, then an add reading the projection back),
``torch_compile`` of the same, and ``vidgen``'s ``vidgen.ops.linear_residual`` (one matmul with the
residual added in its epilogue). Matmul rate as for the GEGLU rows.

Passes: ``fwd`` (inference) and ``fwd+bwd`` (tuning: gradients of x, weight and bias).
``copy_fraction`` is the ideal bytes (fwd: read x, write y; fwd+bwd: that plus read x and dy,
write dx) over the run's measured copy bandwidth; vidgen's kernels read x twice per pass (a
statistics pass, then the normalising pass), so their ceiling is below 1.

Usage: ``python -m benchmarks.bench_frame_group_norm [--ops frame_group_norm geglu linear_residual] [--dtype fp16]
[--quick] [--smoke]``.
Writes ``benchmarks/results/frame_group_norm-<gpu>-<date>.{csv,json,png}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from benchmarks import harness

LEVELS = [(64, 320), (32, 640), (16, 1280), (8, 1280)]  # (latent side, channels) at 512x512
GROUPS, BATCH = 32, 2
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class NormCase:
    name: str
    frames: tuple[int, ...]
    silu: bool
    eps: float


NORM_CASES = [NormCase("tune-a-video", (8, 24), silu=True, eps=1e-5),
              NormCase("animatediff-motion", (16,), silu=False, eps=1e-6)]
# GEGLU feed-forwards: (case, tokens M, dim K); the projection is K -> 2 x 4K. AnimateDiff at 512x512,
# 16 frames, batch 2: its spatial transformers' and motion modules' feed-forwards at the four levels
# (M = 2 x 16 x h x w); Stable Video Diffusion at 576x1024, 14 frames, batch 2, top level.
GEGLU_CASES = [("animatediff 64x64", 2 * 16 * 64 * 64, 320), ("animatediff 32x32", 2 * 16 * 32 * 32, 640),
               ("animatediff 16x16", 2 * 16 * 16 * 16, 1280), ("animatediff 8x8", 2 * 16 * 8 * 8, 1280),
               ("svd 72x128", 2 * 14 * 72 * 128, 320)]
# --smoke: the plumbing on any device, tiny odd shapes, eager peers only, nothing written.
SMOKE_LEVELS, SMOKE_GROUPS, SMOKE_BATCH = [(5, 8)], 4, 1
SMOKE_GEGLU_CASES = [("smoke", 13, 6)]
# (case, M, K, N): the feed-forward's 4C -> C output Linear and the attention's C -> C output projection
LINEAR_RESIDUAL_CASES = [
    *((f"animatediff {side}x{side} {where}", 2 * 16 * side * side, k * channels, channels)
      for side, channels in LEVELS[:3] for where, k in (("ff", 4), ("to_out", 1))),
    ("svd 72x128 ff", 2 * 14 * 72 * 128, 4 * 320, 320)]
SMOKE_LINEAR_RESIDUAL_CASES = [("smoke residual", 13, 10, 6)]


def _error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def smoke_time_ms(fn) -> dict:
    """--smoke's stand-in for ``harness.time_ms``: one host-timed call (the plumbing, not a result)."""
    start = time.perf_counter()
    fn()
    return {"ms": (time.perf_counter() - start) * 1e3}


def _measure(fn, device, timer) -> dict:
    """Time ``fn`` (after one checked call); a peer that cannot run is a row with its error."""
    try:
        fn()
        _synchronize(device)
        return timer(fn)
    except Exception as exc:  # e.g. Inductor failing on this torch build
        if harness.is_cuda_error(exc):
            raise
        _synchronize(device)
        return {"ms": None, "error": _error(exc)}


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def torch_group_norm_video(x, num_frames, num_groups, weight, bias, eps, silu):
    """diffusers' way: GroupNorm (+ SiLU) of the (B, C, F, h, w) video, back on the image layout."""
    batch_frames, channels, height, width = x.shape
    video = x.view(-1, num_frames, channels, height, width).permute(0, 2, 1, 3, 4)
    y = torch.nn.functional.group_norm(video, num_groups, weight, bias, eps)
    if silu:
        y = torch.nn.functional.silu(y)
    return y.permute(0, 2, 1, 3, 4).reshape(batch_frames, channels, height, width)


def _pass_runner(direction, fn, inputs, grad):
    """fwd: ``fn(*inputs)`` without autograd; fwd+bwd: the gradients of every input that requires one."""
    if direction == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return lambda: torch.autograd.grad(fn(*inputs), wanted, grad)


def measure_peers(shape: dict, peers: dict, inputs: list, nbytes: dict, ceilings: dict, device, timer,
                  flops: dict | None = None) -> list[dict]:
    """One row per pass: every peer's time, vidgen's bandwidth (and matmul rate, given ``flops``) and
    speedups, and vidgen's output's relative L2 difference from each peer's (fwd), which a smoke run
    checks."""
    rows = []
    out = {name: _pass_runner("fwd", fn, inputs, None)() for name, fn in peers.items() if name != "torch_compile"}
    grad = torch.randn_like(out["vidgen"])
    for direction in PASSES:
        row = {**shape, "pass": direction}
        for name, fn in peers.items():
            timing = _measure(_pass_runner(direction, fn, inputs, grad), device, timer)
            for key in ("ms", "ms_p20", "ms_p80", "error"):
                if timing.get(key) is not None:
                    row[f"{name}_{key}"] = timing[key]
        ours = row.get("vidgen_ms")
        if ours:
            row.update({f"vidgen_{k}": v for k, v in harness.bandwidth(nbytes[direction], ours, ceilings).items()})
            if flops:
                row.update({f"vidgen_{k}": v for k, v in harness.throughput(flops[direction], ours, ceilings).items()})
            for name in peers:
                if name != "vidgen" and row.get(f"{name}_ms"):
                    row[f"speedup_vs_{name}"] = row[f"{name}_ms"] / ours
        if direction == "fwd":
            for name in out:
                if name != "vidgen":
                    row[f"rel_l2_vs_{name}"] = _rel_l2(out["vidgen"], out[name])
        print(row)
        rows.append(row)
    return rows


def bench_frame_group_norm(dtype, device, ceilings, *, quick=False, smoke=False) -> list[dict]:
    from vidgen.ops import frame_group_norm

    levels = SMOKE_LEVELS if smoke else LEVELS[:2] if quick else LEVELS
    groups, batch = (SMOKE_GROUPS, SMOKE_BATCH) if smoke else (GROUPS, BATCH)
    compiled = None if smoke else torch.compile(torch_group_norm_video, dynamic=False)
    # One specialisation per shape and grad mode: past dynamo's default of 8 the peer would run eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    timer = smoke_time_ms if smoke else harness.time_ms
    rows = []
    for case in NORM_CASES:
        for frames in case.frames[:1] if quick or smoke else case.frames:
            for side, channels in levels:
                x = torch.randn(batch * frames, channels, side, side, device=device, dtype=dtype).requires_grad_()
                weight = (1 + 0.1 * torch.randn(channels, device=device, dtype=dtype)).requires_grad_()
                bias = (0.1 * torch.randn(channels, device=device, dtype=dtype)).requires_grad_()
                settings = (frames, groups)
                peers = {"torch_eager": lambda x, w, b, settings=settings, case=case: torch_group_norm_video(
                    x, *settings, w, b, case.eps, case.silu)}
                if compiled is not None:
                    peers["torch_compile"] = lambda x, w, b, settings=settings, case=case: compiled(
                        x, *settings, w, b, case.eps, case.silu)
                peers["vidgen"] = lambda x, w, b, settings=settings, case=case: frame_group_norm(
                    x, *settings, w, b, case.eps, silu=case.silu)
                activation = x.numel() * x.element_size()
                shape = {"bench": "frame_group_norm", "case": case.name, "level": f"{side}x{side}", "C": channels,
                         "F": frames, "groups": groups, "silu": case.silu, "dtype": str(dtype).split(".")[-1]}
                nbytes = {"fwd": 2 * activation, "fwd+bwd": 5 * activation}
                rows += measure_peers(shape, peers, [x, weight, bias], nbytes, ceilings, device, timer)
                del x, weight, bias
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def torch_geglu(x, weight, bias):
    """diffusers' GEGLU: the projection (cuBLAS), then GELU(gate) x value reading it back."""
    value, gate = torch.nn.functional.linear(x, weight, bias).chunk(2, dim=-1)
    return value * torch.nn.functional.gelu(gate)


def bench_geglu(dtype, device, ceilings, *, quick=False, smoke=False) -> list[dict]:
    from vidgen.ops import geglu

    cases = SMOKE_GEGLU_CASES if smoke else GEGLU_CASES[:2] if quick else GEGLU_CASES
    compiled = None if smoke else torch.compile(torch_geglu, dynamic=False)
    timer = smoke_time_ms if smoke else harness.time_ms
    rows = []
    for name, tokens, dim in cases:
        inner = 4 * dim
        x = torch.randn(tokens, dim, device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(2 * inner, dim, device=device, dtype=dtype) * dim ** -0.5).requires_grad_()
        bias = (0.1 * torch.randn(2 * inner, device=device, dtype=dtype)).requires_grad_()
        peers = {"torch_eager": torch_geglu}
        if compiled is not None:
            peers["torch_compile"] = compiled
        peers["vidgen"] = geglu
        size = x.element_size()
        forward_bytes = (x.numel() + weight.numel() + bias.numel() + tokens * inner) * size
        # backward: read dy, x and weight; write dx, dweight and dbias
        nbytes = {"fwd": forward_bytes, "fwd+bwd": forward_bytes + (tokens * inner + 2 * x.numel()
                                                                   + 2 * weight.numel() + bias.numel()) * size}
        projection = 2 * tokens * dim * 2 * inner
        shape = {"bench": "geglu", "case": name, "M": tokens, "K": dim, "N": inner,
                 "dtype": str(dtype).split(".")[-1]}
        rows += measure_peers(shape, peers, [x, weight, bias], nbytes, ceilings, device, timer,
                              flops={"fwd": projection, "fwd+bwd": 3 * projection})
        del x, weight, bias
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


def torch_linear_residual(x, weight, bias, residual):
    """diffusers' output projection and residual add: the Linear (cuBLAS), then the add reading it back."""
    return torch.nn.functional.linear(x, weight, bias) + residual


def bench_linear_residual(dtype, device, ceilings, *, quick=False, smoke=False) -> list[dict]:
    from vidgen.ops import linear_residual

    cases = SMOKE_LINEAR_RESIDUAL_CASES if smoke else LINEAR_RESIDUAL_CASES[:2] if quick else LINEAR_RESIDUAL_CASES
    compiled = None if smoke else torch.compile(torch_linear_residual, dynamic=False)
    timer = smoke_time_ms if smoke else harness.time_ms
    rows = []
    for name, tokens, k, n in cases:
        x = torch.randn(tokens, k, device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(n, k, device=device, dtype=dtype) * k ** -0.5).requires_grad_()
        bias = (0.1 * torch.randn(n, device=device, dtype=dtype)).requires_grad_()
        residual = torch.randn(tokens, n, device=device, dtype=dtype).requires_grad_()
        peers = {"torch_eager": torch_linear_residual}
        if compiled is not None:
            peers["torch_compile"] = compiled
        peers["vidgen"] = linear_residual
        size = x.element_size()
        forward_bytes = (x.numel() + weight.numel() + bias.numel() + 2 * residual.numel()) * size
        # backward: read dy, x and weight; write dx, dweight and dbias (the residual's gradient is dy itself)
        nbytes = {"fwd": forward_bytes, "fwd+bwd": forward_bytes + (residual.numel() + 2 * x.numel()
                                                                   + 2 * weight.numel() + bias.numel()) * size}
        projection = 2 * tokens * k * n
        shape = {"bench": "linear_residual", "case": name, "M": tokens, "K": k, "N": n,
                 "dtype": str(dtype).split(".")[-1]}
        rows += measure_peers(shape, peers, [x, weight, bias, residual], nbytes, ceilings, device, timer,
                              flops={"fwd": projection, "fwd+bwd": 3 * projection})
        del x, weight, bias, residual
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


BENCHES = {"frame_group_norm": bench_frame_group_norm, "geglu": bench_geglu, "linear_residual": bench_linear_residual}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--ops", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    parser.add_argument("--quick", action="store_true", help="the two largest levels, the first frame count")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, any device, no torch.compile peer; timings are no results, nothing written")
    args = parser.parse_args(argv)
    if args.smoke:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ceilings = {"copy_gbs": 1.0, "bf16_matmul_tflops": 1.0}
    else:
        harness.require_cuda()
        device, ceilings = "cuda", harness.ceilings()
        print("ceilings:", ceilings)
    rows = []
    for name in args.ops:
        rows += BENCHES[name](DTYPES[args.dtype], device, ceilings, quick=args.quick, smoke=args.smoke)
    if args.smoke:
        print("smoke run: timings are not results; nothing written")
        return 0
    stem = harness.write_results("frame_group_norm", rows, harness.environment(), ceilings)
    plotted = [dict(r, label=f"{r['bench']} {r['case']} " + (f"{r['level']} F={r['F']} " if "F" in r else "")
                    + r["pass"]) for r in rows if r.get("speedup_vs_torch_eager")]
    if plotted:
        harness.plot_speedups(stem, plotted, label_key="label", speedup_key="speedup_vs_torch_eager",
                              title="vidgen fused norms: speedup vs torch eager")
    print(f"results: {stem}.csv / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
