"""Fair A/B timing of vidgen against a reference: what the speedup columns of ``vidgen sample``,
``vidgen demo`` and ``vidgen eval --parity`` report.

Timing one cold run against one warm one measures compilation, allocator growth and cache
state, not the code (0.5x to 3x on the same model). So both sides are warmed up first, then run
in rounds that alternate which side goes first (neither always inherits the other's warm
caches or thermal state), and the speedup is reported as the median of the per-round ratios
with their spread.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CPU_CAVEAT = ("CPU run: this speedup does not predict a GPU's. On a CPU both sides run PyTorch (vidgen's ops "
              "fall back to their reference implementations); vidgen's kernels run on CUDA tensors.")


@dataclass
class Comparison:
    """Seconds of each timed round of a reference and a candidate run, and the last result of each."""

    reference_seconds: list[float] = field(default_factory=list)
    candidate_seconds: list[float] = field(default_factory=list)
    reference_result: object = None
    candidate_result: object = None

    @property
    def ratios(self) -> list[float]:
        """reference / candidate per round: above 1 the candidate was faster."""
        return [r / c for r, c in zip(self.reference_seconds, self.candidate_seconds)]

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.ratios), max(self.ratios)

    def summary(self) -> str:
        low, high = self.spread
        rounds = len(self.ratios)
        return (f"{self.speedup:.2f}x (median of {rounds} alternating round{'s' if rounds != 1 else ''} "
                f"after a warm-up of both, range {low:.2f}x-{high:.2f}x)")


def compare(reference: Callable[[], object], candidate: Callable[[], object], *, rounds: int = 3,
            warmup: int = 1, seconds: Callable[[Callable[[], object]], tuple[object, float]] | None = None,
            ) -> Comparison:
    """Time ``reference`` and ``candidate`` over ``rounds`` rounds after ``warmup`` untimed runs of each.

    Round i runs the candidate first when i is even and the reference first when it is odd.
    ``seconds(fn) -> (result, seconds)`` times one call (default: wall clock around the call;
    pass one that synchronises the device, or that reads a run's own stage timings).
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0, got {warmup}")
    seconds = seconds or wall_clock()
    for _ in range(warmup):
        candidate()
        reference()
    result = Comparison()
    for i in range(rounds):
        order = ("candidate", "reference") if i % 2 == 0 else ("reference", "candidate")
        for side in order:
            value, elapsed = seconds(candidate if side == "candidate" else reference)
            getattr(result, f"{side}_seconds").append(elapsed)
            setattr(result, f"{side}_result", value)
    return result


def wall_clock(clock: Callable[[], float] = time.perf_counter, synchronize: Callable[[], None] | None = None):
    """``seconds(fn)`` for :func:`compare`: ``clock`` around the call, ``synchronize`` (a device's) on both sides."""
    def seconds(fn):
        if synchronize:
            synchronize()
        start = clock()
        value = fn()
        if synchronize:
            synchronize()
        return value, clock() - start

    return seconds


def device_synchronizer(device) -> Callable[[], None] | None:
    """What makes wall-clock timing of work on ``device`` honest: a CUDA synchronise, nothing on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None
