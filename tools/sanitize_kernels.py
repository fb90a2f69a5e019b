"""One call of every vidgen kernel, forward and backward, for ``compute-sanitizer`` to watch.

    compute-sanitizer --tool memcheck python3 -m tools.sanitize_kernels [--kernel NAME ...]
    python3 -m tools.sanitize_kernels --list

Each entry runs one op once at a real Stable Diffusion 1.5 shape: the latents of a 16-frame
512x512 video (2x4x16x64x64) for the noise and guidance ops, the SD1.5 head dims (40, 80, 160)
and a 16-frame key table for the attention ops, SD1.5's first-level widths (320 channels, a
1280-wide GEGLU) for the GroupNorm over frames and the projections. The attention token count is modest (N = 256,
one video) because the sanitizer slows kernels 10-100x; N = 256 is SD1.5's 16x16 level, where
D = 160 has faulted on a GPU before.

Between entries it prints ``[sanitize] begin NAME`` and ``[sanitize] end NAME ok|FAILED ...``
(flushed, after a device synchronisation), so the sanitizer's reports, which it prints when a
kernel ends, fall between the markers of the entry that launched it
(``tools/gpu_check/evidence.py`` attributes them that way). Outputs come from poisoned memory (every
``torch.empty`` is NaN) and must come back finite. After a CUDA error the context is unusable,
so the script stops there (exit 3) and a caller reruns the entries not yet begun; any other
failure is reported and the next entry runs (exit 1 at the end).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

import torch

from benchmarks import harness

BEGIN, END, SKIP = "[sanitize] begin", "[sanitize] end", "[sanitize] skip"
EXIT_FAILED, EXIT_CUDA_ERROR = 1, 3
HEAD_DIMS = (40, 80, 160)
MODES = ("sparse_causal", "first_frame", "full")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Sizes of one run: ``latents`` (B, C, F, h, w) for noise and guidance, and the attention
    problem (B, F, N, H) with each entry's head dim."""

    latents: tuple[int, int, int, int, int] = (2, 4, 16, 64, 64)
    batch: int = 1
    frames: int = 16
    tokens: int = 256
    heads: int = 8


TINY = Shapes(latents=(1, 4, 3, 8, 8), batch=1, frames=3, tokens=17, heads=2)  # for a CPU run of the script


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    op: str                                       # the op's name in vidgen's backend registry
    backend: str                                  # forced for the call
    run: Callable[[Shapes, torch.device], list[torch.Tensor]]  # returns every tensor the kernels wrote


def _randn(*shape, device, dtype=torch.float16) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)


def _correlated_noise(shapes: Shapes, device) -> list[torch.Tensor]:
    from vidgen.ops import correlated_noise

    seeds = torch.arange(1, shapes.latents[0] + 1, device=device)
    return [correlated_noise(shapes.latents, kind="progressive", alpha=2.0, seed=seeds, device=device,
                             dtype=torch.float16)]


def _add_noise(shapes: Shapes, device) -> list[torch.Tensor]:
    from vidgen.ops import add_noise

    x0 = _randn(*shapes.latents, device=device)
    timesteps = torch.randint(0, 1000, (shapes.latents[0],), device=device)
    alphas_cumprod = torch.linspace(0.9991, 0.0047, 1000, device=device)
    return list(add_noise(x0, timesteps, alphas_cumprod, kind="mixed", alpha=1.0, seed=7))


def _guided_step(shapes: Shapes, device) -> list[torch.Tensor]:
    """Every stage at once: Video Adapter prior, CFG, guidance rescale (the statistics kernel),
    per-video alphas read on the device, in-kernel PYoCo noise and the predicted x0."""
    from vidgen.ops import guided_step

    sample, cond, uncond, prior = (_randn(*shapes.latents, device=device) for _ in range(4))
    batch = shapes.latents[0]
    return list(guided_step(
        sample, cond, uncond, prior, guidance_scale=7.5, prior_strength=0.5, guidance_rescale=0.7,
        alpha_prod_t=torch.linspace(0.3, 0.5, batch, device=device),
        alpha_prod_prev=torch.linspace(0.6, 0.8, batch, device=device),
        eta=1.0, noise_kind="progressive", noise_alpha=2.0, seed=11, return_pred_original=True))


def _frame_attention(mode: str, head_dim: int):
    def run(shapes: Shapes, device) -> list[torch.Tensor]:
        from vidgen.kernels import frame_attention as kernels
        from vidgen.ops import frame_attention

        table = {"sparse_causal": kernels.sparse_causal_key_frames, "first_frame": kernels.first_frame_key_frames,
                 "full": kernels.full_key_frames}[mode](shapes.frames)
        shape = (shapes.batch, shapes.frames, shapes.tokens, shapes.heads, head_dim)
        q, k, v = (_randn(*shape, device=device).requires_grad_(True) for _ in range(3))
        out = frame_attention(q, k, v, table)
        return [out.detach(), *torch.autograd.grad(out, (q, k, v), _randn(*shape, device=device))]
    return run


def _temporal_attention(head_dim: int):
    def run(shapes: Shapes, device) -> list[torch.Tensor]:
        from vidgen.ops import temporal_attention

        # the image layout of a UNet projection, (B*F, N, H*D), viewed as (B, F, N, H, D)
        projection = (shapes.batch * shapes.frames, shapes.tokens, shapes.heads * head_dim)
        bases = [_randn(*projection, device=device).requires_grad_(True) for _ in range(3)]
        q, k, v = (t.view(shapes.batch, shapes.frames, shapes.tokens, shapes.heads, head_dim) for t in bases)
        out = temporal_attention(q, k, v)
        return [out.detach(), *torch.autograd.grad(out, (q, k, v), _randn(*out.shape, device=device))]
    return run


def _frame_group_norm(shapes: Shapes, device) -> list[torch.Tensor]:
    """Tune-A-Video's ResNet norm: the statistics and apply passes forward, their backward, SiLU fused."""
    from vidgen.ops import frame_group_norm

    frames, channels = shapes.frames, 320
    size = max(int(shapes.tokens ** 0.5), 1)
    x = _randn(shapes.batch * frames, channels, size, size, device=device).requires_grad_(True)
    weight, bias = (_randn(channels, device=device).requires_grad_(True) for _ in range(2))
    out = frame_group_norm(x, frames, 32, weight, bias, silu=True)
    return [out.detach(), *torch.autograd.grad(out, (x, weight, bias), _randn(*out.shape, device=device))]


def _projection(shapes: Shapes, outputs: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A feed-forward's (M, K) input at SD1.5's first level (K = 320) and an (outputs, K) Linear."""
    tokens = shapes.batch * shapes.frames * shapes.tokens
    return (_randn(tokens, 320, device=device), _randn(outputs, 320, device=device) / 16,
            _randn(outputs, device=device))


def _geglu(shapes: Shapes, device) -> list[torch.Tensor]:
    from vidgen.ops import geglu

    x, weight, bias = _projection(shapes, 2 * 1280, device)
    return [geglu(x, weight, bias)]


def _linear_residual(shapes: Shapes, device) -> list[torch.Tensor]:
    from vidgen.ops import linear_residual

    x, weight, bias = _projection(shapes, 320, device)
    return [linear_residual(x, weight, bias, _randn(*x.shape, device=device))]


ENTRIES = [
    Entry("correlated_noise", "correlated_noise", "triton", _correlated_noise),
    Entry("add_noise", "add_noise", "triton", _add_noise),
    Entry("guided_step_cuda", "guided_step", "cuda", _guided_step),
    Entry("guided_step_triton", "guided_step", "triton", _guided_step),
    *(Entry(f"frame_attention_{mode}_d{d}", "frame_attention", "triton", _frame_attention(mode, d))
      for d in HEAD_DIMS for mode in MODES),
    *(Entry(f"temporal_attention_d{d}", "temporal_attention", "triton", _temporal_attention(d)) for d in HEAD_DIMS),
    Entry("frame_group_norm", "frame_group_norm", "triton", _frame_group_norm),
    Entry("geglu", "geglu", "triton", _geglu),
    Entry("linear_residual", "linear_residual", "triton", _linear_residual),
]
NAMES = [entry.name for entry in ENTRIES]


def run_entry(entry: Entry, shapes: Shapes, device: torch.device) -> str | None:
    """Runs one entry; None when every output came back finite, else what went wrong."""
    from vidgen import ops

    with ops.use_backend(entry.backend):
        outputs = entry.run(shapes, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bad = [f"output {i}: {(~torch.isfinite(t)).sum().item()} of {t.numel()} non-finite"
           for i, t in enumerate(outputs) if not torch.isfinite(t).all()]
    return "; ".join(bad) or None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sanitize_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", nargs="+", choices=NAMES, metavar="NAME",
                        help="run only these entries, in this order (default: all; --list names them)")
    parser.add_argument("--list", action="store_true", help="print the entry names and exit")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, to try the script on a CPU (with TRITON_INTERPRET=1 for the Triton entries)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(NAMES))
        return 0
    device = torch.device(args.device)
    shapes = TINY if args.tiny else Shapes()
    # Poison: an output element no kernel wrote is NaN (ints: their max) and fails the finite check.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.manual_seed(0)

    from vidgen.ops import _backend
    from vidgen import ops  # noqa: F401  (declares every op)

    failed = 0
    for entry in (e for name in (args.kernel or NAMES) for e in ENTRIES if e.name == name):
        reason = _backend.unsupported_reason(entry.backend, _backend.REGISTRY[entry.op], device)
        if reason:
            print(f"{SKIP} {entry.name}: {reason}", flush=True)
            continue
        print(f"{BEGIN} {entry.name}", flush=True)
        try:
            problem = run_entry(entry, shapes, device)
        except Exception as exc:  # noqa: BLE001 - reported, then the next entry (or the exit) follows
            print(f"{END} {entry.name} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)
            if harness.is_cuda_error(exc):
                return EXIT_CUDA_ERROR
            failed += 1
            continue
        print(f"{END} {entry.name} " + (f"FAILED: {problem}" if problem else "ok"), flush=True)
        failed += problem is not None
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
