"""One denoising step under torch.profiler, the default and vidgen side by side: where the time goes.

    python -m benchmarks.profile_step [--cases animatediff tune-a-video] [--top 15]
    python -m benchmarks.profile_step --device cpu --tiny     # the plumbing, on any machine

Cases, on the SD1.5-size random model (``vidgen.default_model``), fp16,
512x512, on CUDA:

* ``animatediff``: AnimateDiff, 16 frames, CFG 7.5 (one UNet call on a 2 x 16-frame batch per
  step): diffusers' default modules against ``vidgen.patch(pipe)``;
* ``tune-a-video``: Tune-A-Video, 8 frames, CFG 12.5: the reference formulation (gathered K/V on
  SDPA, permute copies: ``VideoUNet.use_vidgen_ops(False, False)``) against vidgen's kernels,
  both through ``vidgen.sampling`` as ``benchmarks/bench_e2e.py`` runs them;
* ``animatediff-free-noise``: AnimateDiff with FreeNoise (windows of 16 frames, stride 4) making
  64 frames: diffusers' FreeNoise blocks against vidgen's fused motion module;
* ``svd`` and ``svd-xt``: Stable Video Diffusion at its full size (random weights,
  ``vidgen.default_model.svd_pipeline``), 576x1024, 14 and 25 frames, guidance 1 -> 3 over the
  frames (one UNet call on the CFG batch per step): diffusers against ``vidgen.patch(pipe)``. Its
  ``TransformerSpatioTemporalModel`` counts as temporal attention whole, spatial blocks included
  (vidgen's forward runs the temporal blocks' parts without calling the blocks as modules, so a
  finer split would differ between the sides).

A step is the time from one UNet call to the next: the UNet, the guidance arithmetic, the
scheduler step and the preparation of the next input, as the sampling loop runs them. For each
side: a 2-step warm-up run (Triton compilation, cuDNN's choices); on CUDA, a run whose steps
2..n are timed free-running, without the profiler (the step's wall time, ``wall_ms``); a run
whose second step is profiled with every module wrapped in a role scope
(:mod:`benchmarks.step_roles`).

Kernel time is attributed to the role scope its launching operator ran in (a motion module's
parts all count as temporal attention), and to its name's role only when it ran outside every
scope. ``launch gaps / CPU-bound`` is the step's wall time minus its summed kernel time: the
time the device waited for the host (Python, launches, synchronisation). Kernels on concurrent
streams would make the sum exceed the wall time; the gap is then reported as zero.

On a CPU (``--device cpu --tiny``: the tiny built-in model, fp32, 64x64, 4 frames) the
"kernels" are the operators' own CPU time (self time), the wall time is the profiled step's
(the profiler slows the operators it times) and the gap is Python between operators; the
numbers show that the script works, not how a GPU spends its time.

Writes ``profile_step-<device>-<date>.{csv,json}`` (``harness.write_results``: rows of kind
``step`` (wall and kernel time per side, vidgen's step speedup), ``role`` (time per role) and
``kernel`` (the top kernels by time per side)) and a stacked-bar ``.png`` of the role times,
after each case, so a run stopped at its cap keeps the cases it finished.
"""
from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass
from typing import Callable

import torch

from benchmarks import harness
from benchmarks.step_roles import GAP, ROLES, RoleScopes, kernel_role, parse_scope, scope_role

CASES = ("animatediff", "tune-a-video", "animatediff-free-noise", "svd", "svd-xt")
SIDES = ("default", "vidgen")
PROMPT = "a red horse runs in the sky"


@dataclass
class Shape:
    """What one profile runs at: the model, the latent size and the precision."""

    arch: str
    dtype: torch.dtype
    size: int
    animatediff_frames: int
    tuneavideo_frames: int
    free_noise: tuple[int, int, int] = (64, 16, 4)  # AnimateDiff+FreeNoise: frames, context length, stride
    svd_arch: str = "svd"  # vidgen.default_model.SVD_ARCHS
    svd_frames: tuple[int, int] = (14, 25)  # the svd and svd-xt cases
    svd_size: tuple[int, int] = (576, 1024)  # height, width


FULL = Shape("sd15", torch.float16, 512, 16, 8)
TINY = Shape("tiny", torch.float32, 64, 4, 4, free_noise=(6, 4, 2), svd_arch="tiny", svd_frames=(2, 3),
             svd_size=(32, 32))


@dataclass
class Case:
    """A case ready to run: ``run(steps)`` samples and returns the latents; ``use(side)`` switches
    the implementation; ``unet`` marks the step boundaries; ``models`` get the role scopes."""

    name: str
    frames: int
    run: Callable[[int], torch.Tensor]
    use: Callable[[str], None]
    unet: torch.nn.Module
    models: list[torch.nn.Module]


def animatediff_case(model_dir: str, shape: Shape, device: torch.device, free_noise: bool = False) -> Case:
    """AnimateDiff, or with ``free_noise`` AnimateDiff+FreeNoise (enabled before patching, ``shape.free_noise``)."""
    import vidgen
    from vidgen.default_model import animatediff_pipeline

    pipe = animatediff_pipeline(model_dir, shape.dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    frames = shape.animatediff_frames
    if free_noise:
        frames, context_length, context_stride = shape.free_noise
        pipe.enable_free_noise(context_length=context_length, context_stride=context_stride)

    def run(steps: int) -> torch.Tensor:
        return pipe(PROMPT, num_frames=frames, height=shape.size, width=shape.size,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                    generator=torch.Generator(device).manual_seed(0)).frames

    def use(side: str) -> None:
        if side == "vidgen":
            vidgen.patch(pipe)
        else:
            vidgen.unpatch(pipe)

    # pipe.unet is read at each use: patching keeps the module and changes its parts in place
    return Case("animatediff-free-noise" if free_noise else "animatediff", frames, run, use, pipe.unet, [pipe.unet])


def tuneavideo_case(model_dir: str, shape: Shape, device: torch.device) -> Case:
    from vidgen.sampling import VideoModel, sample_video

    model = VideoModel.from_pretrained(model_dir, torch_dtype=shape.dtype, device=device)

    def run(steps: int) -> torch.Tensor:
        return sample_video(model, PROMPT, num_frames=shape.tuneavideo_frames, height=shape.size, width=shape.size,
                            num_inference_steps=steps, guidance_scale=12.5, decode=False, progress=False).latents

    def use(side: str) -> None:
        model.unet.use_vidgen_ops(side == "vidgen", side == "vidgen")

    return Case("tune-a-video", shape.tuneavideo_frames, run, use, model.unet, [model.unet])


def svd_case(model_dir: str, shape: Shape, device: torch.device, xt: bool = False) -> Case:
    """Stable Video Diffusion from one random image (``model_dir`` unused: the pipeline is built here)."""
    import numpy as np
    from PIL import Image

    import vidgen
    from vidgen.default_model import svd_pipeline

    pipe = svd_pipeline(shape.svd_arch, shape.dtype, device)
    pipe.set_progress_bar_config(disable=True)
    frames = shape.svd_frames[1 if xt else 0]
    height, width = shape.svd_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))

    def run(steps: int) -> torch.Tensor:
        return pipe(image, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                    min_guidance_scale=1.0, max_guidance_scale=3.0, output_type="latent",
                    generator=torch.Generator(device).manual_seed(0)).frames

    def use(side: str) -> None:
        (vidgen.patch if side == "vidgen" else vidgen.unpatch)(pipe)

    return Case("svd-xt" if xt else "svd", frames, run, use, pipe.unet, [pipe.unet])


BUILDERS = {"animatediff": animatediff_case, "tune-a-video": tuneavideo_case,
            "animatediff-free-noise": lambda *args: animatediff_case(*args, free_noise=True),
            "svd": svd_case, "svd-xt": lambda *args: svd_case(*args, xt=True)}


# ----------------------------------------------------------------------------------------------
# Step boundaries
# ----------------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Host time at chosen UNet calls (1-based), the device synchronised there and nowhere else, so
    the steps between two marks run as the loop runs them. ``on_mark(call)`` runs at each mark:
    before the time is taken at the first mark and after it at the others, so what it does
    (starting or stopping a profiler) stays outside the timed steps."""

    def __init__(self, unet: torch.nn.Module, device: torch.device, marks: tuple[int, ...],
                 on_mark: Callable[[int], None] | None = None):
        self.unet, self.device, self.marks, self.on_mark = unet, device, set(marks), on_mark
        self.calls = 0
        self.times: dict[int, float] = {}

    def __enter__(self) -> "StepClock":
        def before_call(_module, _args):
            self.calls += 1
            if self.calls in self.marks:
                _synchronize(self.device)
                opening = self.calls == min(self.marks)
                if self.on_mark is not None and opening:
                    self.on_mark(self.calls)
                self.times[self.calls] = time.perf_counter()
                if self.on_mark is not None and not opening:
                    self.on_mark(self.calls)

        self.handle = self.unet.register_forward_pre_hook(before_call)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def timed_step_ms(case: Case, device: torch.device, steps: int) -> float:
    """Milliseconds per step over steps 2..steps (free-running between two synchronised marks)."""
    with StepClock(case.unet, device, (2, steps)) as clock:
        case.run(steps)
    return 1e3 * (clock.times[steps] - clock.times[2]) / (steps - 2)


def profile_one_step(case: Case, device: torch.device):
    """The profiler's events of step 2 of a 3-step run, every module in its role scope, and the
    step's wall time under the profiler (ms)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)

    def on_mark(call: int) -> None:
        (profiler.start if call == 2 else profiler.stop)()

    with RoleScopes(case.models), StepClock(case.unet, device, (2, 3), on_mark) as clock:
        case.run(3)
    return profiler.events(), 1e3 * (clock.times[3] - clock.times[2])


# ----------------------------------------------------------------------------------------------
# Attribution
# ----------------------------------------------------------------------------------------------
@dataclass
class Breakdown:
    """Kernel time (microseconds) per role, and per (kernel name, role) with its call count."""

    role_us: dict[str, float]
    kernel_us: dict[tuple[str, str], float]
    kernel_calls: dict[tuple[str, str], int]

    @property
    def total_us(self) -> float:
        return sum(self.role_us.values())


def _enclosing_roles(event, cache: dict[int, list[str]]) -> list[str]:
    """The roles of the scopes around ``event``, outermost first (memoised per parent)."""
    parent = event.cpu_parent
    if parent is None:
        return []
    key = id(parent)
    if key not in cache:
        own = parse_scope(parent.name)
        cache[key] = _enclosing_roles(parent, cache) + ([own[0]] if own else [])
    return cache[key]


def _is_annotation(event) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or parse_scope(event.name) is not None


def attribute(events, device_type: str) -> Breakdown:
    """Where the kernel time of ``events`` (``profiler.events()``) went, by role.

    CUDA: each kernel linked to the operator (or role range) that launched it takes that event's
    scope role (else its name's); kernels the profiler did not link to an event take their name's
    role.
    CPU: each operator's self time, by the same rule (record_function ranges are not operators:
    their own time is Python between operators, i.e. the gap)."""
    from torch.autograd import DeviceType

    role_us: dict[str, float] = collections.defaultdict(float)
    kernel_us: dict[tuple[str, str], float] = collections.defaultdict(float)
    kernel_calls: dict[tuple[str, str], int] = collections.defaultdict(int)
    cache: dict[int, list[str]] = {}

    def add(name: str, role: str, us: float) -> None:
        role_us[role] += us
        kernel_us[(name, role)] += us
        kernel_calls[(name, role)] += 1

    host_events = [e for e in events if e.device_type == DeviceType.CPU and not getattr(e, "is_python_function", False)]
    if device_type == "cuda":
        linked_us: dict[str, float] = collections.defaultdict(float)
        for event in host_events:  # role ranges too: a Triton kernel launched from Python links to one
            own = parse_scope(event.name)
            for kernel in event.kernels:
                if parse_scope(kernel.name) is not None:
                    continue  # a range's projection on the GPU timeline, not a kernel
                scopes = _enclosing_roles(event, cache) + ([own[0]] if own else [])
                role = scope_role(scopes) or kernel_role(kernel.name)
                add(kernel.name, role, kernel.duration)
                linked_us[kernel.name] += kernel.duration
        device_us: dict[str, float] = collections.defaultdict(float)
        device_calls: dict[str, int] = collections.defaultdict(int)
        for event in events:
            if event.device_type == DeviceType.CUDA and not _is_annotation(event):
                device_us[event.name] += event.time_range.elapsed_us()
                device_calls[event.name] += 1
        for name, us in device_us.items():
            unlinked = us - linked_us.get(name, 0.0)
            if unlinked > 1e-3:
                role = kernel_role(name)
                role_us[role] += unlinked
                kernel_us[(name, role)] += unlinked
                kernel_calls[(name, role)] += device_calls[name]
    else:
        for event in (e for e in host_events if not _is_annotation(e)):
            role = scope_role(_enclosing_roles(event, cache)) or kernel_role(event.name)
            add(event.name, role, event.self_cpu_time_total)
    return Breakdown(dict(role_us), dict(kernel_us), dict(kernel_calls))


def rows_of(case: str, side: str, frames: int, shape: Shape, wall_ms: float | None,
            profiled_wall_ms: float, breakdown: Breakdown, top: int) -> list[dict]:
    """The step, role and top-kernel rows of one side of one case.

    Shares and the gap are taken against the wall time the kernel times belong with: on CUDA the
    step without the profiler (``wall_ms``: its kernels run as long either way, while the profiler
    slows the host), on a CPU the profiled step itself (``wall_ms=None``: the profiler slows the
    operators it times too)."""
    size = "x".join(map(str, shape.svd_size)) if case.startswith("svd") else shape.size  # SVD: height x width
    common = {"case": case, "side": side, "frames": frames, "size": size, "dtype": str(shape.dtype)[6:]}
    kernel_ms = breakdown.total_us / 1e3
    wall_source = "profiled" if wall_ms is None else "unprofiled"
    wall_ms = profiled_wall_ms if wall_ms is None else wall_ms
    rows = [{**common, "kind": "step", "wall_ms": wall_ms, "wall_source": wall_source,
             "profiled_wall_ms": profiled_wall_ms,
             "kernel_ms": kernel_ms, "kernel_fraction": kernel_ms / wall_ms if wall_ms > 0 else None}]
    for role in ROLES:
        if role in breakdown.role_us:
            ms = breakdown.role_us[role] / 1e3
            rows.append({**common, "kind": "role", "role": role, "ms": ms, "share": ms / wall_ms})
    gap_ms = max(wall_ms - kernel_ms, 0.0)
    rows.append({**common, "kind": "role", "role": GAP, "ms": gap_ms, "share": gap_ms / wall_ms})
    ranked = sorted(breakdown.kernel_us.items(), key=lambda item: -item[1])[:top]
    for rank, ((name, role), us) in enumerate(ranked, 1):
        rows.append({**common, "kind": "kernel", "rank": rank, "kernel": name[:200], "role": role,
                     "calls": breakdown.kernel_calls[(name, role)], "ms": us / 1e3, "share": us / 1e3 / wall_ms})
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup`` on every step row: the default side's wall time over this side's, per case."""
    default = {r["case"]: r["wall_ms"] for r in rows if r["kind"] == "step" and r["side"] == "default"}
    for row in rows:
        if row["kind"] == "step" and row["case"] in default:
            row["speedup"] = default[row["case"]] / row["wall_ms"]


def plot_roles(stem: str, rows: list[dict], title: str) -> str:
    """Stacked horizontal bars, one per case and side: milliseconds per role, the gap last."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no pyplot state

    bars = [(r["case"], r["side"]) for r in rows if r["kind"] == "step"]
    ms = {(r["case"], r["side"], r["role"]): r["ms"] for r in rows if r["kind"] == "role"}
    fig = Figure(figsize=(10, 0.55 * len(bars) + 2.2))
    ax = fig.add_subplot()
    positions = list(range(len(bars)))[::-1]  # first case on top
    left = [0.0] * len(bars)
    colours = dict(zip(ROLES, [f"C{i}" for i in range(len(ROLES))]))
    for role in (*ROLES, GAP):
        widths = [ms.get((case, side, role), 0.0) for case, side in bars]
        if not any(widths):
            continue
        style = {"color": "0.85", "hatch": "//", "edgecolor": "0.5"} if role == GAP else {"color": colours[role]}
        ax.barh(positions, widths, left=left, label=role, **style)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(positions, [f"{case} {side}" for case, side in bars], fontsize=8)
    ax.set_xlabel("milliseconds per denoising step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    return stem + ".png"


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="the tiny built-in model, fp32, 64x64, 4 frames "
                                                            "(required on a CPU: the plumbing, not a profile)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--timed-steps", type=int, default=4, help="steps timed without the profiler (default 4)")
    parser.add_argument("--top", type=int, default=15, help="kernels listed per side (default 15)")
    parser.add_argument("--out", help=f"folder for the result files (default {harness.RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.timed_steps < 1:
        parser.error("--timed-steps: expected >= 1")
    if args.device == "cuda":
        harness.require_cuda()
    elif not args.tiny:
        parser.error("--device cpu profiles the tiny model only: add --tiny")
    from vidgen import default_model

    device, shape = torch.device(args.device), TINY if args.tiny else FULL
    model_dir = default_model.ensure(shape.arch)
    env = harness.environment()
    rows: list[dict] = []
    stem = None
    with torch.no_grad():
        for name in args.cases:
            case = BUILDERS[name](model_dir, shape, device)
            for side in SIDES:
                case.use(side)
                case.run(2)  # warm-up
                # on a CPU the profiled step is the reference (rows_of), so no separate timed run
                wall_ms = timed_step_ms(case, device, 2 + args.timed_steps) if device.type == "cuda" else None
                events, profiled_ms = profile_one_step(case, device)
                breakdown = attribute(events, device.type)
                rows += rows_of(name, side, case.frames, shape, wall_ms, profiled_ms, breakdown, args.top)
                print(f"{name:<22} {side:<8} F={case.frames:<3} step {wall_ms or profiled_ms:9.2f} ms, kernels "
                      f"{breakdown.total_us / 1e3:9.2f} ms, under the profiler {profiled_ms:9.2f} ms")
            case.use("default")
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
            add_speedups(rows)
            # after every case: a run stopped at its cap keeps what it measured
            stem = harness.write_results("profile_step", rows, env, results_dir=args.out)
            plot_roles(stem, rows, f"one denoising step by role ({env.get('gpu') or args.device}, "
                                   f"{shape.arch}, {str(shape.dtype)[6:]}, {shape.size}px)")
    for row in rows:
        if row["kind"] == "role":
            print(f"  {row['case']:<22} {row['side']:<8} {row['role']:<24} {row['ms']:9.2f} ms "
                  f"{100 * row['share']:5.1f}%")
    print(f"results: {stem}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
