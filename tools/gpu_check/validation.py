"""The end of a run: the validation report (read by ``tools/report.py`` for README's status), the files
that come back from ``$OUT`` and the one-screen summary."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tarfile
import textwrap
import time

from benchmarks import harness
from tools import ROOT
from tools.gpu_check.deadline import Runner
from tools.gpu_check.evidence import kernel_statuses

# Results written outside benchmarks/results/ that come back in results.tgz when a phase rewrote them.
TUNED_TABLES = [os.path.join(ROOT, "kernels", "frame_attention_tuned.json")]  # tools/sweep_frame_attention.py


def validation_report(environment: dict, runner: Runner, junit: dict | None, sanitizer: dict) -> dict:
    return {
        "validation": 1,  # schema version; tools/report.py tells these files from benchmark results by it
        "environment": environment,
        "deadline_s": runner.deadline_s,
        "elapsed_s": round(runner.elapsed(), 1),
        "dry_run": runner.dry_run,
        "phases": [dataclasses.asdict(p) | {"log": os.path.basename(p.log), "seconds": round(p.seconds, 1)}
                   for p in runner.phases],
        "tests": None if junit is None else {"files": junit["files"], "totals": junit["totals"],
                                             "failed": junit["failed"][:100]},
        "sanitizer": sanitizer,
        "kernels": kernel_statuses(junit, sanitizer, tests_finished=any(
            p.name == "tests" and p.status in ("ok", "failed") for p in runner.phases)),
    }


def write_report(report: dict, results_dir: str) -> str:
    """``<results_dir>/validation-<gpu>-<date>.json``, named like the benchmarks' result files."""
    path = harness.result_stem("validation", report["environment"], results_dir) + ".json"
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    return path


# ----------------------------------------------------------------------------------------------
# The summary
# ----------------------------------------------------------------------------------------------
def summary(report: dict, report_path: str, shipped: list[str]) -> str:
    env = report["environment"]
    lines = [f"==== vidgen gpu-check{' (dry run)' if report['dry_run'] else ''}: {env.get('gpu') or 'no GPU'}, "
             f"driver {env.get('driver', '-')}, torch {env.get('torch')}, triton {env.get('triton')}, "
             f"commit {env.get('commit')}, {env.get('date')}"]
    phases = [f"{p['name']} " + ("" if p["status"] == "ok" else p["status"].split(" (")[0] + " ")
              + f"{p['seconds']:.0f}s" for p in report["phases"]]
    lines += textwrap.wrap("phases: " + ", ".join(phases), width=150, subsequent_indent="  ")
    lines += _test_lines(report["tests"])
    lines += [_sanitizer_line(tool, entries) for tool, entries in report["sanitizer"].items()]
    lines.append("kernels (dry run: stand-in commands, not evidence):" if report["dry_run"] else "kernels:")
    for kernel, verdict in report["kernels"].items():
        c = verdict["tests"]
        problem = f"  {verdict['problems'][0]}" if verdict["problems"] else ""
        lines.append(f"  {kernel:<38} {verdict['status']:<15} tests {c['passed']} passed {c['failed'] + c['errors']} "
                     f"failed{problem}"[:160])
    shown = os.path.relpath(report_path, ROOT) if report_path.startswith(ROOT + os.sep) else report_path
    lines.append(f"report: {shown}; out: {', '.join(shipped)}")
    lines.append(f"total {report['elapsed_s']:.0f} s of {report['deadline_s']} s")
    return "\n".join(lines)


def _test_lines(tests: dict | None) -> list[str]:
    if tests is None:
        return ["tests: no JUnit report (the test phase did not run or was killed before writing it)"]
    t = tests["totals"]
    lines = [f"tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"]
    lines += [f"  {test}" for test in tests["failed"][:8]]
    if len(tests["failed"]) > 8:
        lines.append(f"  ... and {len(tests['failed']) - 8} more (tests.xml)")
    return lines


def _sanitizer_line(tool: str, entries: dict[str, dict]) -> str:
    by_status: dict[str, list[str]] = {}
    for name, result in entries.items():
        by_status.setdefault(result["status"], []).append(name)
    clean = len(by_status.pop("clean", []))
    others = "; ".join(f"{status}: {', '.join(names) if len(names) <= 4 else f'{len(names)} entries'}"
                       for status, names in sorted(by_status.items()))
    return f"{tool}: {clean} of {len(entries)} clean" + (f"; {others}" if others else "")


# ----------------------------------------------------------------------------------------------
# What comes back
# ----------------------------------------------------------------------------------------------
def ship(runner: Runner, out_dir: str, report_path: str, junit_path: str) -> list[str]:
    """At most 8 files into ``out_dir`` (the device tool's limit): tests.xml, the report, logs.tgz
    and results.tgz (new files of benchmarks/results/ and ``TUNED_TABLES``, paths from the repo root) now; run.log and
    summary.txt, which the command line writes last, are in the returned list too."""
    os.makedirs(out_dir, exist_ok=True)
    shipped = ["run.log", "summary.txt"]
    for path in (junit_path, report_path):
        if os.path.exists(path) and os.path.dirname(os.path.abspath(path)) != os.path.abspath(out_dir):
            shutil.copyfile(path, os.path.join(out_dir, os.path.basename(path)))
        if os.path.exists(path):
            shipped.append(os.path.basename(path))
    with tarfile.open(os.path.join(out_dir, "logs.tgz"), "w:gz") as tar:
        tar.add(runner.logs, arcname="logs")
        environment = os.path.join(runner.work, "environment.json")
        if os.path.exists(environment):
            tar.add(environment, arcname="logs/environment.json")
    shipped.append("logs.tgz")
    started = time.time() - runner.elapsed()
    new = [p for p in [*glob.glob(os.path.join(harness.RESULTS_DIR, "*")), *filter(os.path.exists, TUNED_TABLES)]
           if os.path.getmtime(p) >= started - 1]
    if new and not runner.dry_run:
        with tarfile.open(os.path.join(out_dir, "results.tgz"), "w:gz") as tar:
            for path in sorted(new):
                tar.add(path, arcname=os.path.relpath(path, ROOT))
        shipped.append(f"results.tgz ({len(new)} files)")
    return shipped
