"""The README's status and results sections and speedup plot, generated from the files in benchmarks/results/.

    python -m tools.report [--results DIR] [--readme PATH] [--check]

Reads the newest result file (by the date tag of its run) of every benchmark in the results
folder (default ``benchmarks/results/``), and summarises every op and end-to-end case in one
table line: vidgen's speedup over each peer timed in the same run, the fraction of a ceiling
measured in that run (copy bandwidth, bf16 matmul rate) and vidgen's peak memory relative to
a peer, each as the geometric mean over the line's cases with their range. The device, date,
versions and commit come from the files' tags. It draws the speedups in one PNG next to the
results, and rewrites the part of the README between ``<!-- results:begin -->`` and
``<!-- results:end -->``, leaving every other byte as it was. With no result files the section
says that no GPU result exists yet.

The status section (between ``<!-- status:begin -->`` and ``<!-- status:end -->``) comes from
the newest validation report of ``make gpu-check`` (``tools/gpu_check/``,
``validation-<GPU>-<date>.json`` beside the result files; dry runs are not evidence and are
skipped): which kernels ran correct on which GPU and toolchain, and when, with their test and
compute-sanitizer verdicts. Without one it says that no kernel has been validated on a GPU.
``--check`` writes nothing and exits 1 when either section is not what the files give (a CI
guard against a stale README).

Which rows make a line, and which of their fields hold the numbers, is declared per benchmark
in ``LINES``: the scripts' rows differ in shape (one per implementation, per pass or per case)
and compare against different peers; the field names follow ``benchmarks/harness.py``'s schema.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import statistics
import sys
from typing import Callable

from benchmarks import harness
from tools import ROOT

BEGIN_MARKER = "<!-- results:begin -->"
END_MARKER = "<!-- results:end -->"
STATUS_BEGIN_MARKER = "<!-- status:begin -->"
STATUS_END_MARKER = "<!-- status:end -->"
README_PATH = os.path.join(ROOT, "README.md")
PLOT_NAME = "summary_speedups.png"


# ----------------------------------------------------------------------------------------------
# What a table line is made of
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """vidgen's numbers for one shape / configuration of a line, all relative to the same run."""

    speedup: dict[str, float] = dataclasses.field(default_factory=dict)  # peer -> peer time / vidgen time
    ceiling: dict[str, float] = dataclasses.field(default_factory=dict)  # ceiling -> fraction of it reached
    memory: dict[str, float] = dataclasses.field(default_factory=dict)   # peer -> vidgen peak / peer peak
    failed: bool = False                                                 # vidgen did not run this case


@dataclasses.dataclass(frozen=True)
class Line:
    """One table line: its label and how to read its cases from a result file's rows."""

    label: str
    cases: Callable[[list[dict]], list[Case]]


def _positive(value) -> float | None:
    """``value`` as a float when it is a usable ratio (a number, finite, above zero), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _ratios(pairs) -> dict[str, float]:
    return {name: value for name, value in ((name, _positive(v)) for name, v in pairs) if value is not None}


def _from_rows(select: Callable[[dict], bool], speedup_prefix: str, ceiling: tuple[str, str] | None = None,
               not_peers: tuple[str, ...] = ()) -> Callable[[list[dict]], list[Case]]:
    """Cases from the rows ``select`` picks (vidgen's rows): every ``<speedup_prefix><peer>`` field
    is a speedup over that peer (peers found in the data, so a new peer appears by itself, except
    ``not_peers``: vidgen's own variants), ``ceiling = (field, name)`` the fraction of a ceiling.
    A row carrying an error (``error``, ``ours_error``) or ``oom`` is a failed case."""

    def cases(rows: list[dict]) -> list[Case]:
        found = []
        for row in filter(select, rows):
            speedup = _ratios((key[len(speedup_prefix):], value) for key, value in row.items()
                              if key.startswith(speedup_prefix) and key[len(speedup_prefix):] not in not_peers)
            fraction = _ratios([(ceiling[1], row.get(ceiling[0]))]) if ceiling else {}
            failed = any(row.get(key) for key in ("error", "ours_error", "oom"))
            found.append(Case(speedup=speedup, ceiling=fraction, failed=failed))
        return found
    return cases


def _motion_module(direction: str) -> Callable[[list[dict]], list[Case]]:
    """bench_temporal_attention's module rows: ``ours_eager`` against diffusers' modules; peak
    memory is recorded for the forward pass only."""
    peers = ("diffusers_eager", "diffusers_compiled")

    def cases(rows: list[dict]) -> list[Case]:
        found = []
        for row in rows:
            if row.get("bench") != "module" or row.get("pass") != direction:
                continue
            ours_peak = _positive(row.get("ours_eager_peak_bytes"))
            memory = _ratios((peer, ours_peak / row[f"{peer}_peak_bytes"]) for peer in peers
                             if ours_peak and _positive(row.get(f"{peer}_peak_bytes")))
            found.append(Case(speedup=_ratios((peer, row.get(f"speedup_vs_{peer}")) for peer in peers),
                              memory=memory, failed=row.get("ours_eager_ms") is None))
        return found
    return cases


def _paired_runs(case: str, ours: str, peers: tuple[str, ...]) -> Callable[[list[dict]], list[Case]]:
    """bench_e2e's rows (one per implementation): speedup and peak-memory ratio of ``ours`` against
    each peer's row of the same case, frame count, size and step count."""

    def cases(rows: list[dict]) -> list[Case]:
        def run_of(row):
            return row.get("case"), row.get("frames"), row.get("size"), row.get("steps")
        by_impl = {(run_of(row), row.get("impl")): row for row in rows}
        found = []
        for row in rows:
            if row.get("case") != case or row.get("impl") != ours:
                continue
            matched = [(peer, by_impl[(run_of(row), peer)]) for peer in peers if (run_of(row), peer) in by_impl]
            ours_seconds, ours_peak = _positive(row.get("seconds")), _positive(row.get("peak_gib"))
            found.append(Case(
                speedup=_ratios((peer, p["seconds"] / ours_seconds) for peer, p in matched
                                if ours_seconds and _positive(p.get("seconds"))),
                memory=_ratios((peer, ours_peak / p["peak_gib"]) for peer, p in matched
                               if ours_peak and _positive(p.get("peak_gib"))),
                failed=ours_seconds is None))
        return found
    return cases


def _tuning_summaries(rows: list[dict]) -> list[Case]:
    """bench_tune's summary rows (vidgen's step against the reference formulation on SDPA, where
    both ran), and a failed case for each configuration where vidgen ran out of memory."""
    compared = [Case(speedup=_ratios([("reference", row.get("speedup"))]),
                     memory=_ratios([("reference", row.get("memory_ratio"))])) for row in rows if row.get("summary")]
    return compared + [Case(failed=True) for row in rows if row.get("impl") == "vidgen" and row.get("oom")]


def _field_is(**expected) -> Callable[[dict], bool]:
    return lambda row: all(row.get(key) == value for key, value in expected.items())


COPY_CEILING = ("copy_fraction", "copy bandwidth")  # harness.bandwidth's field, and its name in the table

# Benchmark (the name a script passes to harness.write_results, before any "-<variant>") -> its lines.
LINES: dict[str, list[Line]] = {
    "noise": [
        Line("correlated_noise", _from_rows(_field_is(op="correlated_noise", impl="vidgen"), "speedup_vs_",
                                            COPY_CEILING)),
        Line("add_noise", _from_rows(_field_is(op="add_noise", impl="vidgen"), "speedup_vs_", COPY_CEILING)),
    ],
    "guidance": [
        Line("guided_step, CUDA library", _from_rows(_field_is(impl="vidgen_cuda"), "speedup_vs_", COPY_CEILING)),
        Line("guided_step, Triton", _from_rows(_field_is(impl="vidgen_triton"), "speedup_vs_", COPY_CEILING)),
    ],
    "frame_attention": [
        Line(f"frame_attention {label}",
             _from_rows(_field_is(impl="vidgen"), f"{phase}_speedup_vs_", ceiling=(f"{phase}_matmul_fraction", "bf16 matmul"),
                        not_peers=("vidgen_pad64",)))
        for phase, label in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd"))
    ],
    "temporal_attention": [
        *(Line(f"temporal_attention {direction}",
               _from_rows(_field_is(bench="op", **{"pass": direction}), "speedup_vs_", COPY_CEILING))
          for direction in ("fwd", "fwd+bwd")),
        *(Line(f"AnimateDiff motion module {direction}", _motion_module(direction)) for direction in ("fwd", "fwd+bwd")),
    ],
    "e2e": [
        Line("AnimateDiff sampling", _paired_runs("animatediff", "vidgen", ("diffusers", "diffusers+compile"))),
        Line("AnimateDiff sampling, compiled", _paired_runs("animatediff", "vidgen+compile", ("diffusers+compile",))),
        Line("Tune-A-Video sampling", _paired_runs("tune-a-video", "vidgen", ("reference",))),
        Line("Video Adapter sampling", _paired_runs("video-adapter", "vidgen", ("plain diffusers",))),
    ],
    "tune": [Line("Tune-A-Video tuning step", _tuning_summaries)],
}


# ----------------------------------------------------------------------------------------------
# Reading the result files
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResultFile:
    """One JSON file of ``harness.write_results``: the run's tags (``environment``) and its rows."""

    path: str
    benchmark: str
    environment: dict
    rows: list

    @property
    def measured_at(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.environment["date"])


def newest_results(results_dir: str) -> list[ResultFile]:
    """The newest result file of every benchmark in ``results_dir`` (none when it does not exist)."""
    newest: dict[str, ResultFile] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if _is_validation(data):
            continue  # make gpu-check's report, read by newest_validation
        if not isinstance(data, dict) or not {"benchmark", "environment", "rows"} <= data.keys():
            raise ValueError(f"{path}: expected a result file of benchmarks/harness.py.write_results, a JSON object "
                             f"with 'benchmark', 'environment' and 'rows'")
        result = ResultFile(path, data["benchmark"], data["environment"], data["rows"])
        known = newest.get(result.benchmark)
        if known is None or (result.measured_at, result.path) > (known.measured_at, known.path):
            newest[result.benchmark] = result
    return [newest[name] for name in sorted(newest)]


def _is_validation(data) -> bool:
    return isinstance(data, dict) and "validation" in data


@dataclasses.dataclass(frozen=True)
class Validation:
    """One report of ``make gpu-check`` (``tools/gpu_check/validation.py``)."""

    path: str
    environment: dict
    tests: dict | None
    kernels: dict

    @property
    def measured_at(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.environment["date"])


def newest_validation(results_dir: str) -> Validation | None:
    """The newest validation report in ``results_dir`` that is not a dry run, or None."""
    newest = None
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if not _is_validation(data) or data.get("dry_run"):
            continue
        if not {"environment", "kernels"} <= data.keys() or "date" not in data["environment"]:
            raise ValueError(f"{path}: expected a validation report of tools/gpu_check, with "
                             f"'environment' (and its 'date') and 'kernels'")
        report = Validation(path, data["environment"], data.get("tests"), data["kernels"])
        if newest is None or (report.measured_at, report.path) > (newest.measured_at, newest.path):
            newest = report
    return newest


@dataclasses.dataclass
class Summary:
    """A table line with its cases, and the result file they came from."""

    label: str
    source: ResultFile
    cases: list[Case]


def summarise(results: list[ResultFile]) -> list[Summary]:
    """Every line with at least one case, in the order of ``LINES``; variants of a benchmark
    (``frame_attention-bf16``) get their own lines, labelled with the variant."""
    summaries = []
    for family, lines in LINES.items():
        for result in results:
            name, _, variant = result.benchmark.partition("-")
            if name != family:
                continue
            for line in lines:
                cases = line.cases(result.rows)
                if cases:
                    summaries.append(Summary(f"{line.label}, {variant}" if variant else line.label, result, cases))
    unknown = sorted({r.benchmark for r in results} - {s.source.benchmark for s in summaries})
    if unknown:
        print(f"tools.report: no table line for {', '.join(unknown)} (add one to LINES in tools/report.py)",
              file=sys.stderr)
    return summaries


def _by_name(cases: list[Case], field: str) -> dict[str, list[float]]:
    """``{name: values}`` of a Case field over the cases, names in order of first appearance."""
    collected: dict[str, list[float]] = {}
    for case in cases:
        for name, value in getattr(case, field).items():
            collected.setdefault(name, []).append(value)
    return collected


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """Geometric mean, and the range when the cases differ at the printed precision."""
    mean, low, high = fmt(statistics.geometric_mean(values)), fmt(min(values)), fmt(max(values))
    return mean if low == high else f"{mean} ({low}-{high})"


def _times(value: float) -> str:
    return f"{value:.2f}x"


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _cell(cases: list[Case], field: str, fmt: Callable[[float], str], joiner: str) -> str:
    parts = [f"{_spread(values, fmt)} {joiner} {name}" for name, values in _by_name(cases, field).items()]
    return "; ".join(parts) or "-"


def _date_span(results: list[ResultFile]) -> str:
    dates = sorted({result.environment["date"][:10] for result in results})
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def _provenance(results: list[ResultFile]) -> list[str]:
    """One sentence per distinct (GPU, commit, versions): where and when the numbers were measured."""
    groups: dict[tuple, list[ResultFile]] = {}
    for result in results:
        env = result.environment
        key = (env.get("gpu") or "unknown GPU", env.get("commit"), env.get("torch"), env.get("triton"), env.get("cuda"))
        groups.setdefault(key, []).append(result)
    sentences = []
    for (gpu, commit, torch_version, triton_version, cuda_version), members in groups.items():
        sentences.append(f"Measured on {gpu}, commit `{commit}`, {_date_span(members)} (torch {torch_version}, triton "
                         f"{triton_version}, CUDA {cuda_version}): {', '.join(r.benchmark for r in members)}.")
    return sentences


def render_table(summaries: list[Summary]) -> str:
    lines = ["| benchmark | cases | vidgen's speedup over each peer | fraction of a ceiling | peak memory |",
             "| --- | --- | --- | --- | --- |"]
    for summary in summaries:
        failed = sum(case.failed for case in summary.cases)
        count = f"{len(summary.cases)}" + (f" ({failed} failed)" if failed else "")
        lines.append(f"| {summary.label} | {count} | {_cell(summary.cases, 'speedup', _times, 'vs')} "
                     f"| {_cell(summary.cases, 'ceiling', _percent, 'of')} "
                     f"| {_cell(summary.cases, 'memory', _times, 'of')} |")
    return "\n".join(lines)


def render_section(results: list[ResultFile], summaries: list[Summary], plot_link: str | None,
                   results_link: str) -> str:
    """The Markdown between the markers (deterministic: the same files give the same text)."""
    note = (f"_Generated by `python -m tools.report` from the newest result file of each benchmark in "
            f"`{results_link}`; edit the generator, not this text._")
    if not results:
        return (f"{note}\n\nNo GPU results yet: no benchmark has produced a result file, so no speed is claimed. "
                f"`vidgen bench --report` on a GPU machine measures them and regenerates this section.")
    if not summaries:
        return (f"{note}\n\n" + "\n".join(_provenance(results))
                + "\n\nNo table line summarises these benchmarks yet (`LINES` in `tools/report.py`).")
    parts = [note, "\n".join(_provenance(results)), render_table(summaries),
             "Speedup: a peer's time over vidgen's, in the same run on the same GPU. Fraction of a ceiling: "
             "vidgen's effective rate over the copy bandwidth or bf16 matmul rate measured in that run. Peak "
             "memory: vidgen's peak over the peer's. Each is the geometric mean over the line's cases, with "
             "their range in brackets."]
    if plot_link:
        parts.append(f"![vidgen's speedup over each peer]({plot_link})")
    return "\n\n".join(parts)


def _sanitizer_cell(verdicts: dict[str, str]) -> str:
    """``{entry: status}`` of one tool -> "clean (n)", or the entries that were not clean."""
    if not verdicts:
        return "not run"
    unclean = [f"{name}: {status}" for name, status in verdicts.items() if status != "clean"]
    return f"clean ({len(verdicts)})" if not unclean else f"{len(verdicts) - len(unclean)}/{len(verdicts)} clean; " \
        + ", ".join(unclean)


def render_status(validation: Validation | None, has_results: bool, results_link: str) -> str:
    """The Markdown between the status markers (deterministic: the same files give the same text)."""
    note = (f"_Generated by `python -m tools.report` from the newest validation report of `make gpu-check` "
            f"in `{results_link}`; edit the generator, not this text._")
    cpu = ("On a CPU every Triton kernel is tested through the interpreter and compiles ahead of time for sm_80 "
           "and sm_90 on the oldest supported Triton and the newest, the fp16/bf16 attention kernels without a "
           "spill stack (`make aot`); the CUDA library compiles for sm_80/sm_90a and loads on a machine without a GPU.")
    speed = ("" if has_results else
             " No benchmark result is committed; no speed is claimed until one is.")
    if validation is None:
        return (f"{note}\n\nNo kernel has been validated on a GPU yet: there is no validation report of "
                f"`make gpu-check` in `{results_link}`. (Frame attention at head dim 160 and CUDA-graph sampling "
                f"have failed on an H200 before; both are fixed here and wait for a GPU to confirm it.) {cpu}{speed}")
    env = validation.environment
    lines = ["| kernel | status | tests passed / failed | compute-sanitizer memcheck | racecheck |",
             "| --- | --- | --- | --- | --- |"]
    for kernel, verdict in validation.kernels.items():
        tests = verdict.get("tests", {})
        sanitizer = verdict.get("sanitizer", {})
        failed = tests.get("failed", 0) + tests.get("errors", 0)
        lines.append(f"| {kernel} | {verdict['status']} | {tests.get('passed', 0)} / {failed} "
                     f"| {_sanitizer_cell(sanitizer.get('memcheck', {}))} | {_sanitizer_cell(sanitizer.get('racecheck', {}))} |")
    report_link = f"{results_link}{os.path.basename(validation.path)}"
    where = (f"The newest `make gpu-check` run, on {env.get('gpu') or 'an unknown GPU'} "
             f"(driver {env.get('driver', '?')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('cuda')}), commit `{env.get('commit')}`, {env['date'][:10]} ([report]({report_link})):")
    parts = [note, where, "\n".join(lines)]
    if validation.tests is not None:
        totals = validation.tests["totals"]
        parts.append(f"The test suite on CUDA tensors in that run: {totals['passed']} passed, {totals['failed']} "
                     f"failed, {totals['errors']} errors, {totals['skipped']} skipped. \"correct on GPU\": every test "
                     f"of the kernel passed and every compute-sanitizer run of it was clean; \"not run\": the run "
                     f"ended before all of its evidence was in.")
    else:
        parts.append("The test suite did not report in that run, so no kernel counts as correct on it.")
    parts.append(cpu + speed)
    return "\n\n".join(parts)


def plot_speedups(summaries: list[Summary], path: str) -> None:
    """Horizontal bars of the geometric-mean speedup per line and peer, whiskers at the range
    (at least one line must have a speedup)."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no pyplot state

    bars = [(f"{s.label} vs {peer}", values) for s in summaries for peer, values in _by_name(s.cases, "speedup").items()]
    means = [statistics.geometric_mean(values) for _, values in bars]
    # exp(mean(log)) can land a rounding error outside [min, max]: clip, matplotlib refuses negative whiskers
    whiskers = [[max(m - min(v), 0.0) for m, (_, v) in zip(means, bars)],
                [max(max(v) - m, 0.0) for m, (_, v) in zip(means, bars)]]
    fig = Figure(figsize=(9, 0.32 * len(bars) + 1.6))
    ax = fig.add_subplot()
    positions = range(len(bars))[::-1]  # first line on top
    ax.barh(list(positions), means, xerr=whiskers, color="tab:blue", ecolor="0.3", capsize=2)
    ax.set_yticks(list(positions), [label for label, _ in bars], fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)  # parity with the peer
    ax.xaxis.set_major_formatter("{x:g}x")
    ax.set_xlabel("speedup over the peer (geometric mean over cases, range as whiskers)")
    gpus = sorted({s.source.environment.get("gpu") or "unknown GPU" for s in summaries})
    ax.set_title(f"vidgen vs peers, {' / '.join(gpus)}, {_date_span([s.source for s in summaries])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------
# The README
# ----------------------------------------------------------------------------------------------
def _split_readme(text: str, readme: str, begin: str = BEGIN_MARKER, end: str = END_MARKER) -> tuple[str, str, str]:
    """(text up to and including the begin marker, the section, text from the end marker on)."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{readme}: expected exactly one {begin} and one {end} line, found "
                         f"{text.count(begin)} and {text.count(end)}")
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    if stop < start:
        raise ValueError(f"{readme}: {end} comes before {begin}")
    return text[:start], text[start:stop], text[stop:]


def _replace_section(text: str, readme: str, begin: str, end: str, section: str) -> tuple[str, bool]:
    """``text`` with the section between ``begin`` and ``end`` set to ``section`` (in the file's own
    line endings), and whether it already was."""
    head, current, tail = _split_readme(text, readme, begin, end)
    newline = "\r\n" if "\r\n" in head else "\n"
    wanted = newline + section.replace("\n", newline) + newline
    return head + wanted + tail, current == wanted


def _link(path: str, readme: str) -> str:
    return os.path.relpath(path, os.path.dirname(os.path.abspath(readme))).replace(os.sep, "/")


def generate(results_dir: str, readme: str, *, check: bool = False) -> bool:
    """Regenerate the plot and the README's status and results sections (``check``: only compare,
    write nothing). Returns whether both sections were already up to date."""
    with open(readme, encoding="utf-8", newline="") as f:  # newline="": keep the file's line endings
        text = f.read()
    for begin, end in ((STATUS_BEGIN_MARKER, STATUS_END_MARKER), (BEGIN_MARKER, END_MARKER)):
        _split_readme(text, readme, begin, end)  # both marker pairs present before anything is computed
    results = newest_results(results_dir)
    summaries = summarise(results)
    plot_path = os.path.join(results_dir, PLOT_NAME)
    has_speedups = any(case.speedup for s in summaries for case in s.cases)
    if not check and has_speedups:
        plot_speedups(summaries, plot_path)
    results_link = _link(results_dir, readme) + "/"
    status = render_status(newest_validation(results_dir), bool(results), results_link)
    section = render_section(results, summaries, _link(plot_path, readme) if has_speedups else None, results_link)
    updated, status_up_to_date = _replace_section(text, readme, STATUS_BEGIN_MARKER, STATUS_END_MARKER, status)
    updated, results_up_to_date = _replace_section(updated, readme, BEGIN_MARKER, END_MARKER, section)
    up_to_date = status_up_to_date and results_up_to_date
    if not check and not up_to_date:
        with open(readme, "w", encoding="utf-8", newline="") as f:
            f.write(updated)
    return up_to_date


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", help=f"folder of result files (default {harness.RESULTS_DIR})")
    parser.add_argument("--readme", help=f"README to update between its markers (default {README_PATH})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a README section differs from what the results give")
    args = parser.parse_args(argv)
    if args.results is not None and not os.path.isdir(args.results):
        parser.error(f"--results {args.results}: not a folder")
    results_dir, readme = args.results or harness.RESULTS_DIR, args.readme or README_PATH
    try:
        up_to_date = generate(results_dir, readme, check=args.check)
    except (OSError, ValueError) as exc:
        print(f"tools.report: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not up_to_date:
            print(f"{readme}: the status or results section is stale; run `python -m tools.report`",
                  file=sys.stderr)
        return 0 if up_to_date else 1
    print(f"{readme}: status and results sections {'already up to date' if up_to_date else 'rewritten'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
