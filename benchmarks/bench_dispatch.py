"""Per-call host cost of vidgen's ops on tiny inputs, where the fixed cost is all there is.

* the torch.library registration: the noise custom op vs calling its implementation;
* the attention ops a UNet calls in every layer (``frame_attention``, ``temporal_attention``), as a
  processor calls them in eager inference (which skips the registration: ``_backend.direct_call_ok``),
  beside PyTorch's SDPA on the same tiny problem, the eager call a user would otherwise make.
  Goal: <= 20 us per call on a GPU machine.

Runs anywhere (CPU: the reference path; GPU: the Triton path). Prints microseconds per call.
"""
from __future__ import annotations

import argparse
import time

import torch

from vidgen.ops import noise as noise_ops


def per_call_us(fn, repeats: int, device: torch.device) -> float:
    for _ in range(20):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeats * 1e6)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 calls per measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 200
    device = torch.device(args.device)
    shape = [1, 1, 2, 4, 4]
    op = torch.ops.vidgen.correlated_noise.default
    impl = noise_ops._correlated_noise_op._init_fn  # the undecorated implementation
    through_op = per_call_us(lambda: op(shape, "mixed", 1.0, 2, 0, None, torch.float32, device), args.repeats, device)
    direct = per_call_us(lambda: impl(shape, "mixed", 1.0, 2, 0, None, torch.float32, device), args.repeats, device)
    print(f"device {device}: custom op {through_op:.1f} us/call, direct {direct:.1f} us/call, "
          f"registration overhead {through_op - direct:.1f} us/call")

    from vidgen.ops import frame_attention, temporal_attention

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 2, 16, 1, 40, device=device, dtype=dtype)  # (B, F, N, H, D)
    table = [[0], [0, 1]]
    heads = q.transpose(1, 3).flatten(2, 3)  # (B, H, F*N, D): the same work as one SDPA call
    with torch.no_grad():
        rows = {
            "frame_attention": per_call_us(lambda: frame_attention(q, q, q, table), args.repeats, device),
            "temporal_attention": per_call_us(lambda: temporal_attention(q, q, q), args.repeats, device),
            "sdpa (peer)": per_call_us(lambda: torch.nn.functional.scaled_dot_product_attention(heads, heads, heads),
                                       args.repeats, device),
        }
    for name, us in rows.items():
        print(f"device {device}: {name} {us:.1f} us/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
