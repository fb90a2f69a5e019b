"""What the torch.library registration costs per call: the custom op vs calling its implementation.

Runs anywhere (CPU: the reference path; GPU: the Triton path) on a tiny input, where the fixed
per-call cost dominates. Prints microseconds per call for both and the difference.
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
