"""Temporal attention (attention over frames) and the AnimateDiff motion module, on a GPU.

Shapes: AnimateDiff at 512x512 (latent 64x64), the four UNet levels 64x64/32x32/16x16/8x8 with
C = 320/640/1280/1280, 8 heads (D = 40/80/160/160), F in {16, 24, 32}, batch 2.

The op, forward / backward / forward+backward, against
  * ``sdpa_frame_major``: PyTorch SDPA on (B*N, H, F, D) views of frame-major projections, i.e.
    after diffusers' permute copy, output reshaped back as diffusers does; every SDPA backend is
    tried and the fastest that runs is reported (``sdpa_backend``);
  * ``sdpa_with_permutes``: the same plus the permute copies in and out of the image layout, what
    a motion module pays around its attention;
  * ``flex_attention`` (compiled) on the frame-major views;
  * ``xformers`` ``memory_efficient_attention`` when installed;
  * ours on image-layout views (no copies). Effective bandwidth counts q, k, v read once and out
    written once (backward: q, k, v, out, dout read, dq, dk, dv written) and is reported as a
    fraction of the device copy bandwidth measured in this run.

The motion module (``AnimateDiffTransformer3D``, random weights): diffusers eager, diffusers under
``torch.compile``, ours (patched instance) eager and compiled, forward and forward+backward.

Usage: ``python -m benchmarks.bench_temporal_attention [--dtype fp16] [--frames 16 24 32] [--quick]``.
Writes ``benchmarks/results/temporal_attention-<gpu>-<date>.{csv,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

from benchmarks import harness

LEVELS = [(64, 320), (32, 640), (16, 1280), (8, 1280)]  # (latent side, channels) at 512x512
HEADS, BATCH = 8, 2
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _measure(fn) -> dict:
    """Time ``fn`` (after one checked call); a peer that cannot run is a row with its error."""
    try:
        fn()
        torch.cuda.synchronize()
        return harness.time_ms(fn)
    except Exception as exc:  # e.g. a grid past 65,535, an unsupported head dim
        torch.cuda.synchronize()
        return {"ms": None, "error": _error(exc)}


def _image_layout_qkv(batch, frames, tokens, channels, dtype, requires_grad=False):
    """q, k, v as (B, F, N, H, D) views of three (B*F, N, C) projection outputs."""
    d = channels // HEADS
    return [torch.randn(batch * frames, tokens, channels, device="cuda", dtype=dtype)
            .view(batch, frames, tokens, HEADS, d).requires_grad_(requires_grad) for _ in range(3)]


def _frame_major(t: torch.Tensor) -> torch.Tensor:
    """(B, F, N, H, D) image-layout view -> contiguous frame-major (B*N, H, F, D)-viewable copy."""
    B, F, N, H, D = t.shape
    return t.detach().permute(0, 2, 1, 3, 4).reshape(B * N, F, H, D).transpose(1, 2)


def _best_sdpa(q, k, v):
    """(fastest SDPA backend name, its timing) on (B*N, H, F, D) inputs, output reshaped as diffusers does."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best, errors = None, []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        def run(backend=backend):
            with sdpa_kernel(backend):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        timing = _measure(run)
        if timing["ms"] is None:
            errors.append(f"{backend.name}: {timing['error']}")
        elif best is None or timing["ms"] < best[1]["ms"]:
            best = (backend, timing, run)
    return best, errors


def bench_op(dtype, frames_list, ceilings, quick) -> list[dict]:
    from vidgen.ops import temporal_attention

    rows = []
    for side, channels in LEVELS[:2] if quick else LEVELS:
        for frames in frames_list:
            tokens = side * side
            q, k, v = _image_layout_qkv(BATCH, frames, tokens, channels, dtype)
            nbytes = q.numel() * q.element_size()
            shape = {"level": f"{side}x{side}", "C": channels, "D": channels // HEADS, "F": frames,
                     "problems": BATCH * tokens * HEADS, "dtype": str(dtype).split(".")[-1]}

            qf, kf, vf = (_frame_major(t) for t in (q, k, v))
            best, sdpa_errors = _best_sdpa(qf, kf, vf)
            peers = {}
            if best is not None:
                backend, peers["sdpa_frame_major"], sdpa_run = best

                def with_permutes():
                    qp, kp, vp = (_frame_major(t) for t in (q, k, v))
                    out = torch.nn.functional.scaled_dot_product_attention(qp, kp, vp)
                    return out.reshape(BATCH, tokens, HEADS, frames, -1).permute(0, 3, 1, 2, 4).contiguous()
                from torch.nn.attention import sdpa_kernel
                with sdpa_kernel(backend):
                    peers["sdpa_with_permutes"] = _measure(with_permutes)
                shape["sdpa_backend"] = backend.name
            shape["sdpa_errors"] = "; ".join(sdpa_errors) or None
            try:
                from torch.nn.attention.flex_attention import flex_attention
                flex = torch.compile(flex_attention, dynamic=False)
                peers["flex_attention"] = _measure(lambda: flex(qf, kf, vf))
            except Exception as exc:
                peers["flex_attention"] = {"ms": None, "error": _error(exc)}
            try:
                import xformers.ops as xops
                xq, xk, xv = (t.transpose(1, 2) for t in (qf, kf, vf))  # (B*N, F, H, D) views
                peers["xformers"] = _measure(lambda: xops.memory_efficient_attention(xq, xk, xv))
            except ImportError:
                pass
            ours = _measure(lambda: temporal_attention(q, k, v))
            rows.append(_op_row(shape, "fwd", ours, peers, 4 * nbytes, ceilings))

            # Backward and forward+backward: ours vs SDPA (best backend) on the frame-major copies.
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
            out = temporal_attention(qg, kg, vg)
            grad = torch.randn_like(out)
            ours_bwd = _measure(lambda: torch.autograd.grad(out, (qg, kg, vg), grad, retain_graph=True))
            ours_fwd_bwd = _measure(lambda: torch.autograd.grad(temporal_attention(qg, kg, vg), (qg, kg, vg), grad))
            peers_bwd, peers_fwd_bwd = {}, {}
            if best is not None:
                from torch.nn.attention import sdpa_kernel
                qs, ks, vs = (t.detach().requires_grad_() for t in (qf, kf, vf))
                with sdpa_kernel(best[0]):
                    try:
                        sdpa_out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)
                        sdpa_grad = torch.randn_like(sdpa_out)
                        peers_bwd["sdpa_frame_major"] = _measure(
                            lambda: torch.autograd.grad(sdpa_out, (qs, ks, vs), sdpa_grad, retain_graph=True))
                        peers_fwd_bwd["sdpa_frame_major"] = _measure(lambda: torch.autograd.grad(
                            torch.nn.functional.scaled_dot_product_attention(qs, ks, vs), (qs, ks, vs), sdpa_grad))
                    except Exception as exc:
                        peers_bwd["sdpa_frame_major"] = {"ms": None, "error": _error(exc)}
            rows.append(_op_row(shape, "bwd", ours_bwd, peers_bwd, 8 * nbytes, ceilings))
            rows.append(_op_row(shape, "fwd+bwd", ours_fwd_bwd, peers_fwd_bwd, 12 * nbytes, ceilings))
            print(rows[-3])
            del q, k, v, qf, kf, vf, qg, kg, vg, out
            torch.cuda.empty_cache()
    return rows


def _op_row(shape, direction, ours, peers, nbytes, ceilings) -> dict:
    row = {"bench": "op", **shape, "pass": direction, "ours_ms": ours.get("ms"), "ours_error": ours.get("error"),
           "ours_ms_p20": ours.get("ms_p20"), "ours_ms_p80": ours.get("ms_p80")}
    if ours.get("ms"):
        rate = harness.bandwidth(nbytes, ours["ms"], ceilings)
        row.update({"ours_gbs": rate["gbs"], "copy_fraction": rate["copy_fraction"]})
    for name, timing in peers.items():
        row[f"{name}_ms"] = timing.get("ms")
        if timing.get("error"):
            row[f"{name}_error"] = timing["error"]
        if timing.get("ms") and ours.get("ms"):
            row[f"speedup_vs_{name}"] = timing["ms"] / ours["ms"]
    return row


def _motion_module(channels, dtype):
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    module = AnimateDiffTransformer3D(num_attention_heads=HEADS, attention_head_dim=channels // HEADS,
                                      in_channels=channels, norm_num_groups=32, double_self_attention=True,
                                      positional_embeddings="sinusoidal", num_positional_embeddings=32,
                                      activation_fn="geglu")
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return module.to("cuda", dtype)


def bench_module(dtype, frames_list, quick) -> list[dict]:
    from vidgen.integration.motion import patch_motion_module

    rows = []
    for side, channels in LEVELS[:2] if quick else LEVELS:
        for frames in frames_list:
            x = torch.randn(BATCH * frames, channels, side, side, device="cuda", dtype=dtype)
            diffusers_module = _motion_module(channels, dtype)
            ours_module = patch_motion_module(copy.deepcopy(diffusers_module))
            variants = {
                "diffusers_eager": diffusers_module,
                "diffusers_compiled": torch.compile(copy.deepcopy(diffusers_module)),
                "ours_eager": ours_module,
                "ours_compiled": torch.compile(ours_module),
            }
            shape = {"bench": "module", "level": f"{side}x{side}", "C": channels, "F": frames,
                     "dtype": str(dtype).split(".")[-1]}
            for direction in ("fwd", "fwd+bwd"):
                row = {**shape, "pass": direction}
                for name, module in variants.items():
                    if direction == "fwd":
                        def run(module=module):
                            with torch.no_grad():
                                return module(x, num_frames=frames)
                    else:
                        xg = x.detach().requires_grad_()

                        def run(module=module, xg=xg):  # training: gradients of the input and every weight
                            out = module(xg, num_frames=frames)
                            return torch.autograd.grad(out.float().square().mean(), [xg, *module.parameters()])
                    timing = _measure(run)
                    row[f"{name}_ms"] = timing.get("ms")
                    if timing.get("error"):
                        row[f"{name}_error"] = timing["error"]
                    if direction == "fwd" and timing.get("ms") is not None:
                        row[f"{name}_peak_bytes"] = harness.peak_memory_bytes(run)
                ours = row.get("ours_eager_ms")
                for peer in ("diffusers_eager", "diffusers_compiled"):
                    if ours and row.get(f"{peer}_ms"):
                        row[f"speedup_vs_{peer}"] = row[f"{peer}_ms"] / ours
                print(row)
                rows.append(row)
            del x, variants, diffusers_module, ours_module
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--quick", action="store_true", help="the two largest levels only")
    parser.add_argument("--skip-module", action="store_true")
    args = parser.parse_args(argv)
    harness.require_cuda()
    dtype = DTYPES[args.dtype]

    ceilings = harness.ceilings()
    env = harness.environment()
    print("ceilings:", ceilings)
    rows = bench_op(dtype, args.frames, ceilings, args.quick)
    if not args.skip_module:
        rows += bench_module(dtype, args.frames, args.quick)
    stem = harness.write_results("temporal_attention", rows, env, ceilings)
    plotted = [dict(r, label=f"{r['bench']} {r['level']} F={r['F']} {r['pass']}") for r in rows
               if r.get("speedup_vs_sdpa_frame_major") or r.get("speedup_vs_diffusers_eager")]
    for r in plotted:
        r["speedup"] = r.get("speedup_vs_sdpa_frame_major") or r.get("speedup_vs_diffusers_eager")
    if plotted:
        harness.plot_speedups(stem, plotted, label_key="label", speedup_key="speedup",
                              title="vidgen temporal attention: speedup vs SDPA (op) / diffusers eager (module)")
    print(f"results: {stem}.csv / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
