"""Where a denoising step's time should go, predicted on a CPU: the roofline of every case.

    python -m benchmarks.roofline [--cases ...] [--launch-us US] [--results DIR] [--out DIR] [--readme [PATH]]
    python -m benchmarks.roofline --tiny --out DIR     # the same plumbing on tiny models (tests)

Each case's step (``benchmarks/roofline_cases.py``: AnimateDiff, Tune-A-Video, Stable Video
Diffusion, Video Adapter, Text2Video-Zero at full size, built on the meta device, no weights) is
recorded operator by operator (``benchmarks/roofline_trace.py``: FLOPs, ideal bytes, launches,
role) and priced on the roofline (``benchmarks/roofline_cost.py``): per kernel
``max(FLOPs / matmul or vector ceiling, bytes / copy bandwidth) + a per-launch floor``. Four
configurations side by side:

* ``eager``: diffusers as users run it, one kernel per operator;
* ``fused``: the same operators with ideal elementwise fusion (each chain of pointwise operators
  costs only its ends): what any elementwise fusion of diffusers' code could reach;
* ``patched``: the step after ``vidgen.patch(..., feed_forward=True, residual_adds=True)`` (the GEGLU
  and residual-add fusions are opt-in until a GPU has timed them; where vidgen has no patch for a
  model, the eager step, and the output says so);
* ``compiled``: the patched step under torch.compile, modelled as Inductor's fusion (pointwise
  operators, reductions and normalisations fuse; matmuls, convolutions, attention and vidgen's ops
  stay library kernels, without epilogue fusion; a GroupNorm too large for one SM reads its input
  twice).

Then the fusions worth writing (``benchmarks/roofline_fusions.py``), each priced on the patched
step and on what torch.compile leaves of it, and each goal (``roofline_cases.GOALS``) against the
predicted speedups and the step's matmul floor (its matmul FLOPs at the matmul ceiling: no
configuration of the same operators is faster).

Ceilings: from the newest GPU validation report in ``--results`` (default ``benchmarks/results/``)
that carries them, else the newest result file that measured them, else the H200 of 2026-11-30;
the output says which. When a measured ``profile_step`` result exists there (a GPU's), its time per
role is printed beside the prediction: measured / predicted is how far the kernels are from the
roofline.

Writes ``roofline-model-<date>.{csv,json,png}`` (``harness.write_results``, tagged
``environment.prediction = true`` and device "model", so nothing reads them as measurements) and,
with ``--readme``, the README's section between ``<!-- roofline:begin -->`` and ``<!-- roofline:end -->``.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import time

from benchmarks import harness
from benchmarks.roofline_cases import CASES, FULL, GOALS, TINY, Recorded, record_cases
from benchmarks.roofline_cost import (LAUNCH_US, Ceilings, Costing, Totals, compute_floor_seconds, elementwise,
                                      inductor, load_ceilings, never, partition)
from benchmarks.roofline_fusions import Saving, combined_under_compile, savings
from benchmarks.step_roles import ROLES

CONFIGS = {"eager": "diffusers eager", "fused": "diffusers + ideal elementwise fusion",
           "patched": "vidgen patched", "compiled": "vidgen patched + torch.compile"}
PAYS = 0.05  # a fusion worth building saves at least this share of the patched step
README_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN_MARKER, END_MARKER = "<!-- roofline:begin -->", "<!-- roofline:end -->"
# The first H200 run's end-to-end times (../shared/gpu/runs/2026-11-30-h200/FINDINGS.md: fp16,
# 512x512, 10 DDIM steps, best of 1 after a warm-up), divided by 10: each includes a tenth of the
# run's prompt encoding and setup, so it bounds a step from above. They are whole-run times, not
# per role; only step totals compare. Its Tune-A-Video "eager" side is the reference formulation
# sampled with vidgen's fused step (the model's uses diffusers' step: 0.1% of the step either way).
FIRST_H200_STEP_MS = {("animatediff-16", "eager"): 167.8, ("animatediff-16", "patched"): 149.5,
                      ("tune-a-video-8", "eager"): 98.1, ("tune-a-video-8", "patched"): 72.5}
# profile_step's cases and sides, in this model's names
_PROFILE_CASES = {"animatediff": "animatediff", "tune-a-video": "tune-a-video"}
_PROFILE_SIDES = {"default": "eager", "vidgen": "patched"}


@dataclasses.dataclass
class Prediction:
    """The model's verdict on one case."""

    recorded: Recorded
    totals: dict[str, Totals]   # config -> totals
    floor_ms: float             # the patched step's matmul FLOPs at the matmul ceiling
    savings: list[Saving]       # per fusion, on the patched step
    with_fusions: Totals        # patched + torch.compile + every non-overlapping fusion that pays under it

    def speedup(self, config: str) -> float:
        return self.totals["eager"].seconds / self.totals[config].seconds

    @property
    def goal(self) -> float | None:
        return GOALS.get(self.recorded.case)


def predict(recorded: Recorded, ceilings: Ceilings) -> Prediction:
    eager, patched = Costing(recorded.eager), Costing(recorded.patched)
    totals = {"eager": Totals.of(partition(eager, never), ceilings),
              "fused": Totals.of(partition(eager, elementwise), ceilings),
              "patched": Totals.of(partition(patched, never), ceilings),
              "compiled": Totals.of(partition(patched, inductor), ceilings)}
    return Prediction(recorded, totals, 1e3 * compute_floor_seconds(recorded.patched, ceilings),
                      savings(patched, ceilings),
                      Totals.of(partition(patched, inductor, combined_under_compile(patched, ceilings)),
                                ceilings))


# ----------------------------------------------------------------------------------------------
# Rows, measured profiles
# ----------------------------------------------------------------------------------------------
def rows_of(prediction: Prediction) -> list[dict]:
    rec = prediction.recorded
    common = {"case": rec.name, "frames": rec.frames, "label": rec.label}
    rows = []
    for config, totals in prediction.totals.items():
        rows.append({**common, "kind": "config", "config": config, "configuration": CONFIGS[config],
                     "tflop": totals.matmul_flops / 1e12, "vector_gflop": totals.vector_flops / 1e9,
                     "gb": totals.nbytes / 1e9, "launches": totals.launches, "ms": totals.ms,
                     "speedup": prediction.speedup(config), "matmul_floor_ms": prediction.floor_ms,
                     "patch_note": rec.patch_note})
        rows += [{**common, "kind": "role", "config": config, "role": role, "ms": 1e3 * seconds}
                 for role, seconds in totals.role_seconds.items()]
    for saving in prediction.savings:
        rows.append({**common, "kind": "fusion", **dataclasses.asdict(saving), "gb_saved": saving.bytes / 1e9,
                     "pays": saving.share >= PAYS})
    best = prediction.with_fusions
    rows.append({**common, "kind": "with_fusions", "ms": best.ms, "gb": best.nbytes / 1e9,
                 "launches": best.launches, "speedup": prediction.totals["eager"].seconds / best.seconds})
    return rows


def measured_profile(results_dir: str) -> tuple[str, dict[tuple[str, str], dict[str, float]]] | None:
    """(source, {(case name, config): {role: ms}}) of the newest GPU ``profile_step`` result at full
    size in ``results_dir``, or None."""
    newest = None
    for path in glob.glob(os.path.join(results_dir, "profile_step-*.json")):
        with open(path) as f:
            data = json.load(f)
        env = data.get("environment") or {}
        if harness.is_prediction(data) or not env.get("gpu") or data.get("benchmark") != "profile_step":
            continue
        key = (env.get("date", ""), path)
        if newest is None or key > newest[0]:
            newest = (key, data, path)
    if newest is None:
        return None
    _, data, path = newest
    roles: dict[tuple[str, str], dict[str, float]] = {}
    for row in data["rows"]:
        case, side = _PROFILE_CASES.get(row.get("case")), _PROFILE_SIDES.get(row.get("side"))
        if row.get("kind") != "role" or case is None or side is None or row.get("size") != 512:
            continue
        roles.setdefault((f"{case}-{row['frames']}", side), {})[row["role"]] = row["ms"]
    gpu = (data.get("environment") or {}).get("gpu")
    return (f"{os.path.basename(path)} ({gpu})", roles) if roles else None


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def print_table(predictions: list[Prediction], ceilings: Ceilings) -> None:
    print(f"\nceilings: matmul {ceilings.matmul_tflops:.0f} TFLOP/s, copy {ceilings.copy_gbs:.0f} GB/s, vector "
          f"{ceilings.vector_tflops:.1f} TFLOP/s (not measured), launch floor {ceilings.launch_us:g} us; "
          f"{ceilings.source}")
    print(f"\n{'case':<20} {'configuration':<38} {'TFLOP':>7} {'GB':>8} {'launches':>8} {'pred. ms':>9} "
          f"{'speedup':>7}")
    for p in predictions:
        for config, totals in p.totals.items():
            print(f"{p.recorded.name:<20} {CONFIGS[config]:<38} {totals.matmul_flops / 1e12:7.2f} "
                  f"{totals.nbytes / 1e9:8.1f} {totals.launches:8d} {totals.ms:9.2f} {p.speedup(config):6.2f}x")
        print(f"{'':<20} {'+ the fusions that pay under compile':<38} {'':>7} {p.with_fusions.nbytes / 1e9:8.1f} "
              f"{p.with_fusions.launches:8d} {p.with_fusions.ms:9.2f} "
              f"{p.totals['eager'].seconds / p.with_fusions.seconds:6.2f}x")
        print(f"{'':<20} {'matmul floor (FLOPs at the matmul ceiling)':<38} {'':>7} {'':>8} {'':>8} "
              f"{p.floor_ms:9.2f} {p.totals['eager'].ms / p.floor_ms:6.2f}x")
        if p.recorded.patch_note:
            print(f"{'':<20} note: {p.recorded.patch_note}")


def print_fusions(predictions: list[Prediction]) -> None:
    print(f"\nfusions, on the patched step (* pays: >= {PAYS:.0%} of it); 'after compile': what is left of the saving "
          f"once Inductor fuses around it (<= 0: Inductor already does it)")
    print(f"{'case':<20} {'fusion':<40} {'kernels':>7} {'GB saved':>8} {'launches':>8} {'ms saved':>8} "
          f"{'share':>6} {'after compile':>14}")
    for p in predictions:
        for s in sorted(p.savings, key=lambda s: -s.ms):
            mark = "*" if s.share >= PAYS else " "
            print(f"{p.recorded.name:<20} {mark}{s.fusion:<39} {s.kernels:7d} {s.bytes / 1e9:8.2f} {s.launches:8d} "
                  f"{s.ms:8.2f} {s.share:6.1%} {s.ms_after_compile:7.2f} ({s.share_after_compile:5.1%})")


def print_measured(predictions: list[Prediction], measured) -> None:
    first = first_comparison(predictions)
    if first:
        print("\nfirst comparison: the H200 run of 2026-11-30 (FINDINGS.md), whole-run time / 10 steps (step totals "
              "only; it measured no roles)\n  " + first.replace(". ", ".\n  "))
    by_name = {p.recorded.name: p for p in predictions}
    if measured is None:
        print("\nno measured profile_step result in the results folder: nothing to compare per role")
        return
    source, roles = measured
    print(f"\nmeasured (profile_step {source}) / predicted, per role")
    for (name, config), measured_roles in sorted(roles.items()):
        if name not in by_name:
            continue
        predicted = by_name[name].totals[config].role_seconds
        for role in sorted(set(measured_roles) | set(predicted), key=lambda r: -measured_roles.get(r, 0.0)):
            measured_ms, predicted_ms = measured_roles.get(role), 1e3 * predicted.get(role, 0.0)
            ratio = f"{measured_ms / predicted_ms:6.2f}" if measured_ms is not None and predicted_ms > 0 else "     -"
            print(f"  {name:<18} {config:<8} {role:<26} measured {measured_ms or 0.0:8.2f} ms, predicted "
                  f"{predicted_ms:8.2f} ms, ratio {ratio}")
        total_m, total_p = sum(measured_roles.values()), by_name[name].totals[config].ms
        print(f"  {name:<18} {config:<8} {'step (wall)':<26} measured {total_m:8.2f} ms, predicted {total_p:8.2f} ms, "
              f"ratio {total_m / total_p:6.2f}")


def goal_verdict(p: Prediction) -> str:
    """What the model says about the case's speedup goal, in one paragraph of Markdown."""
    goal, eager = p.goal, p.totals["eager"]
    patched, compiled, best = p.speedup("patched"), p.speedup("compiled"), eager.seconds / p.with_fusions.seconds
    bound = eager.ms / p.floor_ms
    said = (f"**{p.recorded.label}** (goal >= {goal:g}x eager): patched {patched:.2f}x, patched + torch.compile "
            f"{compiled:.2f}x, with every modelled fusion left that pays under it as well {best:.2f}x; the matmul floor "
            f"({_ms(p.floor_ms)}) bounds any implementation of these operators at {bound:.2f}x.")
    if patched >= goal:
        return said + " The patched step meets the goal at the roofline."
    if best >= goal:
        return said + " The goal is within reach of the fusions and torch.compile, not of the patch alone."
    allowed = eager.ms / goal
    if bound >= goal:
        return (said + f" Out of reach of these fusions: the goal allows {_ms(allowed)} per step, "
                f"{_ms(allowed - p.floor_ms)} above the matmul floor for every byte and launch, where the fully "
                f"fused step still spends {_ms(p.with_fusions.ms - p.floor_ms)} on them.")
    return (said + f" **Out of reach at the roofline**: the step's matmul FLOPs alone take {_ms(p.floor_ms)}, "
            f"more than the {_ms(allowed)} the goal allows. What would reach it: fewer or cheaper FLOPs (FP8 "
            "tensor cores run at twice the fp16 rate; the matmul-bound parts are the convolutions, the attention "
            "and the projections), or, measured rather than predicted, an eager step further below its roofline "
            "than the patched one (the measured / predicted ratios say how far each is).")


def first_comparison(predictions: list[Prediction]) -> str:
    """The first H200 run's step times against the predicted ones, one sentence per case."""
    by_name = {p.recorded.name: p for p in predictions}
    sentences = []
    for name in dict.fromkeys(name for name, _ in FIRST_H200_STEP_MS):
        if name not in by_name:
            continue
        p = by_name[name]
        eager, patched = FIRST_H200_STEP_MS[(name, "eager")], FIRST_H200_STEP_MS[(name, "patched")]
        sentences.append(
            f"{p.recorded.label}: eager {eager:.0f} ms measured against {_ms(p.totals['eager'].ms)} predicted "
            f"({eager / p.totals['eager'].ms:.1f}x), patched {patched:.0f} ms against {_ms(p.totals['patched'].ms)} "
            f"({patched / p.totals['patched'].ms:.1f}x); measured speedup {eager / patched:.2f}x, predicted "
            f"{p.speedup('patched'):.2f}x.")
    if sentences:
        sentences.append("(That run's patched step had neither the fused GEGLU feed-forward nor the fused "
                         "residual adds; the predicted one has both.)")
    return " ".join(sentences)


def readme_section(predictions: list[Prediction], ceilings: Ceilings, plot_link: str | None,
                   measured) -> str:
    parts = ["_Generated by `python -m benchmarks.roofline --readme` (no GPU: a model's predictions, not "
             "measurements); edit the generator, not this text._",
             f"What one denoising step should cost on a GPU, from its operators (`benchmarks/roofline.py`): per kernel "
             f"max(FLOPs / matmul or vector ceiling, bytes / copy bandwidth) plus {ceilings.launch_us:g} us per "
             f"launch, with ideal bytes (inputs read once, outputs written once, views free). Ceilings: matmul "
             f"{ceilings.matmul_tflops:.0f} TFLOP/s, copy {ceilings.copy_gbs:.0f} GB/s ({ceilings.source}). "
             "Predicted milliseconds per step, and speedup over diffusers eager:"]
    lines = ["| case | diffusers eager | + ideal elementwise fusion | vidgen patched | patched + torch.compile "
             "| + every modelled fusion left that pays under compile | matmul floor |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in predictions:
        cells = [_ms(p.totals["eager"].ms)]
        cells += [f"{_ms(p.totals[c].ms)} ({p.speedup(c):.2f}x)" for c in ("fused", "patched", "compiled")]
        cells.append(f"{_ms(p.with_fusions.ms)} ({p.totals['eager'].seconds / p.with_fusions.seconds:.2f}x)")
        cells.append(_ms(p.floor_ms))
        note = " (no vidgen patch yet: patched = eager)" if p.recorded.patch_note else ""
        lines.append(f"| {p.recorded.label}{note} | " + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
    parts.append("The goals, at the roofline:\n\n" + "\n".join(f"- {goal_verdict(p)}" for p in predictions if p.goal))
    paying = ["| case | fusion | GB saved | launches saved | ms saved | share of the patched step | left after "
              "torch.compile |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in predictions:
        for s in sorted(p.savings, key=lambda s: -s.ms):
            if s.share >= PAYS:
                left = (f"{_ms(s.ms_after_compile)} ({s.share_after_compile:.1%})" if s.ms_after_compile > 0
                        else "none: Inductor does it")
                paying.append(f"| {p.recorded.label} | {s.fusion} | {s.bytes / 1e9:.1f} | {s.launches} | "
                              f"{_ms(s.ms)} | {s.share:.1%} | {left} |")
    if len(paying) > 2:
        parts.append(f"Fusions that pay (each predicted to save >= {PAYS:.0%} of the patched step; "
                     "`benchmarks/roofline_fusions.py` says what each one fuses):\n\n" + "\n".join(paying))
    else:
        largest = max(((p, s) for p in predictions for s in p.savings), key=lambda ps: ps[1].share, default=None)
        parts.append(f"Fusions that pay (each predicted to save >= {PAYS:.0%} of the patched step; "
                     "`benchmarks/roofline_fusions.py` says what each one fuses): none left unbuilt"
                     + (f"; the largest left is the {largest[1].fusion} of {largest[0].recorded.label}, "
                        f"{largest[1].share:.1%} of its patched step ({largest[1].share_after_compile:.1%} after "
                        "torch.compile)." if largest else "."))
    parts.append("Built: the GroupNorm over frames with its SiLU (`vidgen.ops.frame_group_norm`: Tune-A-Video's "
                 "5-D GroupNorm and the motion modules' input GroupNorm on the image layout, fp32 statistics, "
                 "one store), which the patched step above runs; it was the largest fusion for Tune-A-Video and "
                 "the Video Adapter (10-16% of their patched step) and cost AnimateDiff's patched step its fp32 "
                 "norm path. Under torch.compile it is ATen ops that Inductor fuses itself. The GEGLU "
                 "feed-forward (`vidgen.ops.geglu`: the projection's value and gate columns in two accumulators "
                 "of one matmul, bias, GELU and product in its epilogue, the 2x-wide projection never written), "
                 "which the patched step above runs with `vidgen.patch(pipe, feed_forward=True)` (opt-in until a "
                 "GPU run times it against cuBLAS; `benchmarks/bench_frame_group_norm.py` does); it was "
                 "predicted to save 6-11% of the patched step, and 4-8% after torch.compile, which cannot put "
                 "this epilogue on its cuBLAS matmul. The transformer blocks' residual adds "
                 "(`vidgen.ops.linear_residual`: the output projection's accumulator starts from the residual "
                 "plus the bias, one store), which the patched step above runs with `vidgen.patch(pipe, "
                 "residual_adds=True)` (opt-in for the same reason; the benchmark's `linear_residual` rows time "
                 "it): both attentions' and the feed-forward's adds of the SD-style blocks (AnimateDiff's, Stable "
                 "Video Diffusion's and Text2Video-Zero's image blocks, Tune-A-Video's and the Video Adapter's "
                 "video blocks with their temporal attention) wherever the attention is diffusers' "
                 "`AttnProcessor2_0`, vidgen's frame or temporal attention, or Text2Video-Zero's cross-frame "
                 "processors (its first-frame attention on vidgen's kernel, its text cross-attention), and the "
                 "temporal blocks vidgen runs itself (the motion modules' blocks, Stable Video Diffusion's `ff_in`, "
                 "attention over frames and `ff`); all residual adds "
                 "together were predicted to save 7-9.5% of the patched step before. "
                 "What the fusion rows still list as residual adds is outside those blocks (a ResNet's second "
                 "convolution with its shortcut add and `/ output_scale_factor`, the transformer models' "
                 "`proj_out`, Stable Video Diffusion's blend after its temporal "
                 "feed-forward), each under 5% of a step, which default-mode Inductor does not fuse into cuBLAS or "
                 "cuDNN either (its max-autotune Triton templates can: `vidgen.patch(pipe, compile={\"mode\": "
                 "\"max-autotune\"})`, not modelled here).")
    first = first_comparison(predictions)
    if first:
        parts.append("First comparison with a GPU: the H200 run of 2026-11-30 timed whole 10-step runs, not roles "
                     "(its times / 10, prompt encoding included, bound a step from above): " + first + " A measured "
                     "speedup above the predicted one comes from kernel efficiency, which a roofline does not see "
                     "(that run measured the temporal attention of a 64x64 motion module at 0.70 ms per call on SDPA "
                     "against 0.20 ms on vidgen's kernel, where both move the same bytes). "
                     "`benchmarks/profile_step.py` on the next GPU gives measured / predicted per role.")
    if measured is not None:
        parts.append(f"A measured profile ({measured[0]}) is in the results folder: `python -m benchmarks.roofline` "
                     "prints measured / predicted per role beside the prediction.")
    if plot_link:
        parts.append(f"![predicted time per role]({plot_link})")
    return "\n\n".join(parts)


def write_readme_section(readme: str, section: str) -> None:
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if text.count(BEGIN_MARKER) != 1 or text.count(END_MARKER) != 1 or text.index(END_MARKER) < text.index(BEGIN_MARKER):
        raise ValueError(f"{readme}: expected one {BEGIN_MARKER} line followed by one {END_MARKER} line")
    head, rest = text.split(BEGIN_MARKER)
    tail = rest.split(END_MARKER)[1]
    with open(readme, "w", encoding="utf-8") as f:
        f.write(f"{head}{BEGIN_MARKER}\n{section}\n{END_MARKER}{tail}")


def plot_rows(predictions: list[Prediction]) -> list[dict]:
    """Rows in ``profile_step.plot_roles``' shape: one bar per case and configuration."""
    rows = []
    for p in predictions:
        for config, totals in p.totals.items():
            rows.append({"kind": "step", "case": p.recorded.name, "side": config})
            rows += [{"kind": "role", "case": p.recorded.name, "side": config, "role": role, "ms": 1e3 * seconds}
                     for role, seconds in totals.role_seconds.items() if role in ROLES]
    return rows


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--tiny", action="store_true", help="tiny models, 3 frames: the plumbing (writes only with --out)")
    parser.add_argument("--launch-us", type=float, default=LAUNCH_US,
                        help=f"per-launch floor in microseconds (default {LAUNCH_US:g})")
    parser.add_argument("--results", help=f"where to look for ceilings and measured profiles (default {harness.RESULTS_DIR})")
    parser.add_argument("--out", help=f"folder for the result files (default {harness.RESULTS_DIR})")
    parser.add_argument("--readme", nargs="?", const=README_PATH, help="rewrite the roofline section of this README "
                                                                       "(default: the repository's)")
    args = parser.parse_args(argv)
    if args.launch_us < 0:
        parser.error("--launch-us: expected >= 0")
    if args.tiny and args.readme == README_PATH:
        parser.error("--readme: the tiny models' predictions do not belong in the repository's README; give a PATH")
    started = time.perf_counter()
    results_dir = args.results or harness.RESULTS_DIR
    ceilings = load_ceilings(results_dir, args.launch_us)
    recorded = record_cases(TINY if args.tiny else FULL, tuple(args.cases),
                            progress=lambda what: print(f"recording {what} ({time.perf_counter() - started:.0f} s)",
                                                        flush=True))
    predictions = [predict(r, ceilings) for r in recorded]
    measured = None if args.tiny else measured_profile(results_dir)
    print_table(predictions, ceilings)
    print_fusions(predictions)
    print_measured(predictions, measured)
    for p in predictions:
        if p.goal:
            print("\n" + goal_verdict(p).replace("**", ""))
    plot_link = None
    if args.out or not args.tiny:
        env = {**harness.environment(), "gpu": "model", "prediction": True, "scale": "tiny" if args.tiny else "full",
               "ceilings_source": ceilings.source}
        rows = [row for p in predictions for row in rows_of(p)]
        stem = harness.write_results("roofline", rows, env, dataclasses.asdict(ceilings), results_dir=args.out)
        from benchmarks.profile_step import plot_roles

        png = plot_roles(stem, plot_rows(predictions), f"predicted time per denoising step by role (roofline, "
                                                       f"{ceilings.source.split(' (')[0]})")
        print(f"\nresults: {stem}.csv/.json/.png")
        if args.readme:
            plot_link = os.path.relpath(png, os.path.dirname(os.path.abspath(args.readme))).replace(os.sep, "/")
    if args.readme:
        write_readme_section(args.readme, readme_section(predictions, ceilings, plot_link, measured))
        print(f"README section written: {args.readme}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
