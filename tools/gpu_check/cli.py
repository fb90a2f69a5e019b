"""The command line of ``python3 -m tools.gpu_check`` and the order of a run (the package's doc says what it does)."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading

import tools.gpu_check
from benchmarks import harness
from tools import ROOT
from tools.gpu_check import phases
from tools.gpu_check.deadline import Runner, end_group
from tools.gpu_check.evidence import FAILED, read_junit
from tools.gpu_check.validation import ship, summary, validation_report, write_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tools.gpu_check",
                                     description=tools.gpu_check.__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=int, default=int(os.environ.get("DEADLINE", 540)),
                        help="seconds the whole run may take (env DEADLINE; default 540)")
    parser.add_argument("--phases", default=os.environ.get("GPU_CHECK_PHASES", ",".join(phases.ALL_PHASES)),
                        help="comma-separated phases or groups to run (default: all)")
    parser.add_argument("--skip", default=os.environ.get("GPU_CHECK_SKIP", ""), help="phases or groups to leave out")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GPU_CHECK_WORKERS", 14)))
    parser.add_argument("--sequential", action="store_true", help="sanitizer after the tests, not beside them")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN") == "1",
                        help="the plumbing with stand-in commands, on any machine (env GPU_CHECK_DRY_RUN=1)")
    return parser.parse_args(argv)


def phase_set(spec: str) -> set[str]:
    """The phases a comma-separated list of phase and group names means."""
    names = set()
    for name in filter(None, (s.strip() for s in spec.split(","))):
        if name in phases.GROUPS:
            names.update(phases.GROUPS[name])
        elif name in phases.ALL_PHASES:
            names.add(name)
        else:
            raise SystemExit(f"gpu_check: unknown phase {name!r}; expected "
                             f"{', '.join([*phases.GROUPS, *phases.ALL_PHASES])}")
    return names


def tests_and_sanitizer(runner: Runner, wanted: set[str], workers: int, sequential: bool) -> tuple[str, dict]:
    """The test phase and the sanitizer phases, side by side unless ``sequential``: the JUnit XML's
    path and the sanitizer's verdicts (empty when its phases broke off; the report is still written)."""
    sanitizer: dict = {}
    tools_wanted = [tool for tool in phases.SANITIZE if tool in wanted]

    def sanitize() -> None:
        try:
            sanitizer.update(phases.run_sanitizer(runner, tools_wanted))
        except Exception as exc:  # noqa: BLE001 - the report still gets written, with the sanitizer not run
            runner.say(f"-- sanitizer phases broke off: {type(exc).__name__}: {exc}")

    beside_tests = bool(tools_wanted) and "tests" in wanted and not sequential
    sanitize_thread = threading.Thread(target=sanitize)
    if beside_tests:
        sanitize_thread.start()
    junit_path = phases.run_tests(runner, workers) if "tests" in wanted else os.path.join(runner.work, "tests.xml")
    if beside_tests:
        sanitize_thread.join()
    elif tools_wanted:
        sanitize()
    return junit_path, sanitizer


def finish(runner: Runner, out_dir: str, environment: dict, junit: dict | None, junit_path: str,
           sanitizer: dict) -> dict:
    """The validation report (a dry run's in the work folder), the files for ``out_dir`` and the
    summary, printed last; returns the report."""
    report = validation_report(environment, runner, junit, sanitizer)
    results_dir = os.path.join(runner.work, "results") if runner.dry_run else harness.RESULTS_DIR
    report_path = write_report(report, results_dir)
    shipped = ship(runner, out_dir, report_path, junit_path)
    text = summary(report, report_path, shipped)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    runner.say(text)
    runner.close()
    if os.path.abspath(runner.work) != os.path.abspath(out_dir):
        shutil.copyfile(os.path.join(runner.work, "run.log"), os.path.join(out_dir, "run.log"))
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    wanted = phase_set(args.phases) - phase_set(args.skip)

    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "gpu-out")
    work = tempfile.mkdtemp(prefix="vidgen-gpu-check-") if os.environ.get("OUT") else out_dir
    runner = Runner(args.deadline, work, args.dry_run)
    # One commit for every file of the run: the sweep may rewrite a tracked table midway.
    runner.env["VIDGEN_COMMIT"] = harness.commit()
    runner.env.setdefault("VIDGEN_CACHE", os.path.join("/tmp", "vidgen-gpu-check-cache"))
    if args.dry_run:
        runner.env.pop("VIDGEN_TEST_DEVICE", None)
    runner.say(f"==== gpu-check: deadline {args.deadline} s, phases "
               f"{', '.join(p for p in phases.ALL_PHASES if p in wanted)}{', dry run' if args.dry_run else ''}; "
               f"work {work}, out {out_dir}")

    phases.setup(runner, wanted)
    environment = phases.capture_environment(runner, wanted)
    model_build = phases.start_model_build(runner) if "bench-e2e" in wanted and not args.dry_run else None
    junit_path, sanitizer = tests_and_sanitizer(runner, wanted, args.workers, args.sequential)
    phases.run_benches(runner, wanted, model_build)
    if model_build is not None and model_build.poll() is None:
        end_group(model_build)

    junit = read_junit(junit_path)
    report = finish(runner, out_dir, environment, junit, junit_path, sanitizer)
    failed_kernels = [k for k, v in report["kernels"].items() if v["status"] == FAILED]
    return 1 if failed_kernels or (junit and (junit["totals"]["failed"] or junit["totals"]["errors"])) else 0
