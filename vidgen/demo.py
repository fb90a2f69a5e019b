"""``vidgen demo`` (``make demo``): the main job on the built-in default model, then an op table.

1. ``vidgen sample`` with no ``--model``: the built-in video model (``--arch shapes`` by default,
   the moving-shapes model trained by ``make reproduce``: "a red square moves left"; ``tiny``
   or ``sd15`` for random weights, ``sd15`` being the full SD1.5 architecture for GPU timings)
   samples a video, writes it to ``--out``, and prints the per-stage timing of vidgen against
   the reference formulation of the same model.
2. Every available op on built-in shapes, with the backend it ran on and its median time: an
   AnimateDiff-style video at 512x512 on a GPU (B=2, F=16, latents 64x64), a small one on a CPU,
   where the ops run their PyTorch reference (or the Triton interpreter).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from . import ops
from .ops import _backend


def _cases(device: torch.device, small: bool) -> list[tuple[str, str, torch.dtype, Callable[[], object]]]:
    """(op, shape label, dtype, call): an AnimateDiff-sized video on a GPU, a small one on a CPU."""
    B, C, F, h, w = (1, 4, 8, 16, 16) if small else (2, 4, 16, 64, 64)
    heads, head_dim = 8, 40  # SD1.5's top level: 320 channels
    shape = (B, C, F, h, w)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    x0 = torch.randn(shape, device=device, dtype=dtype)
    eps_cond, eps_uncond = torch.randn_like(x0), torch.randn_like(x0)
    alphas_cumprod = torch.linspace(0.9991, 0.0047, 1000, device=device)
    timesteps = torch.full((B,), 500, device=device)
    tokens = torch.randn(B * F, h * w, 3, heads * head_dim, device=device, dtype=dtype)  # a fused qkv projection
    q, k, v = (tokens[:, :, i].view(B, F, h * w, heads, head_dim) for i in range(3))
    video, attn = "x".join(map(str, shape)), f"{B}x{F}x{h * w}x{heads}x{head_dim}"
    channels, groups = (32, 8) if small else (heads * head_dim, 32)
    frames = torch.randn(B * F, channels, h, w, device=device, dtype=dtype)  # a ResNet's (b f) c h w input
    norm = f"{B * F}x{channels}x{h}x{w} F={F} G={groups} +SiLU"
    # a transformer block's GEGLU feed-forward on the same tokens: C -> 2 x 4C projection, GELU, product
    ff_tokens = torch.randn(B * F * h * w, channels, device=device, dtype=dtype)
    ff_weight = torch.randn(8 * channels, channels, device=device, dtype=dtype) * channels ** -0.5
    ff_bias = torch.zeros(8 * channels, device=device, dtype=dtype)
    ff = f"{B * F * h * w}x{channels} -> {4 * channels}"
    # the feed-forward's last Linear (4C -> C) with the block's residual add in its epilogue
    ff_hidden = torch.randn(B * F * h * w, 4 * channels, device=device, dtype=dtype)
    ff_out_weight = torch.randn(channels, 4 * channels, device=device, dtype=dtype) * (4 * channels) ** -0.5
    ff_out = f"{B * F * h * w}x{4 * channels} -> {channels} +residual"
    return [
        ("correlated_noise", video, dtype,
         lambda: ops.correlated_noise(shape, kind="progressive", alpha=2.0, seed=0, device=device, dtype=dtype)),
        ("add_noise", video, dtype,
         lambda: ops.add_noise(x0, timesteps, alphas_cumprod, kind="mixed", alpha=1.0, seed=0)),
        ("guided_step", video, dtype,
         lambda: ops.guided_step(x0, eps_cond, eps_uncond, guidance_scale=7.5, alpha_prod_t=0.5, alpha_prod_prev=0.6)),
        ("frame_attention", attn + " sparse-causal", dtype, lambda: ops.sparse_causal_attention(q, k, v)),
        ("temporal_attention", attn, dtype, lambda: ops.temporal_attention(q, k, v)),
        ("frame_group_norm", norm, dtype, lambda: ops.frame_group_norm(frames, F, groups, silu=True)),
        ("geglu", ff, dtype, lambda: ops.geglu(ff_tokens, ff_weight, ff_bias)),
        ("linear_residual", ff_out, dtype,
         lambda: ops.linear_residual(ff_hidden, ff_out_weight, ff_bias[:channels], ff_tokens)),
    ]


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compiles Triton kernels on a GPU)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_ops(device: torch.device, repeats: int = 5) -> list[dict]:
    small = device.type == "cpu"
    rows = []
    for name, shape, dtype, fn in _cases(device, small):
        backend = _backend.select(_backend.REGISTRY[name], device)
        rows.append({"op": name, "backend": backend, "shape": shape, "dtype": str(dtype).replace("torch.", ""),
                     "ms": _time_ms(fn, device, repeats)})
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<20} {'backend':<8} {'shape':<30} {'dtype':<9} {'median ms':>10}"
    lines = [header, "-" * len(header)]
    lines += [f"{r['op']:<20} {r['backend']:<8} {r['shape']:<30} {r['dtype']:<9} {r['ms']:>10.3f}" for r in rows]
    return "\n".join(lines)


def build_parser():
    from . import default_model
    from .commands import _args

    parser = _args.parser("vidgen demo", __doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=_args.positive_int, default=5, help="timed calls per op (after a warm-up)")
    parser.add_argument("--arch", default=default_model.DEFAULT_ARCH, choices=default_model.ARCHS,
                        help="the built-in model: shapes (trained), tiny or sd15 (random weights, for timings)")
    parser.add_argument("--out", default="demo_out/sample.mp4",
                        help="the sampled video: .mp4 or .gif file, or a folder (no extension) of PNG frames")
    parser.add_argument("--rounds", type=_args.positive_int, default=3,
                        help="timed sampling rounds per side (vidgen, reference), alternating, after a warm-up of each")
    parser.add_argument("--ops-only", action="store_true", help="skip the sampling run")
    return parser


def main(argv=None) -> int:
    from .commands import _args

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _args.check_backend()
        _args.check_device(args.device)
        _args.check_video_out("--out", args.out)
    except _args.UsageError as exc:
        return _args.fail(parser, exc)
    device = torch.device(args.device)
    if not args.ops_only:
        from .commands import sample

        status = sample.main(["--arch", args.arch, "--device", args.device, "--out", args.out,
                              "--rounds", str(args.rounds), "--quiet"])
        if status:
            return status
        print()
    print(f"vidgen ops on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(format_table(run_ops(device, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
