"""``python -m vidgen.shapes.reproduce`` (``make reproduce``): train the moving-shapes models, run
every experiment, write ``docs/RESULTS.md``, its figure, and the built-in model's weights.

The work folder keeps every stage's output, so an interrupted run continues where it stopped
(delete it to start over). Jobs run in ``--workers`` processes of one CPU thread each, which on
a CPU is both faster than threads and deterministic. ``--budget smoke`` runs every stage with a
couple of steps: the plumbing in a minute, numbers that mean nothing, and nothing written
outside the work folder unless ``--results``/``--ship`` say so.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time

import torch

from . import experiments, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUDGETS = {"full": experiments.FULL, "smoke": experiments.SMOKE}


def run_jobs(work: str, budget: experiments.Budget, workers: int) -> list[dict]:
    """Every stage-2 job, ``workers`` at a time, each once its dependencies have finished."""
    pending = {name: (kind, args) for name, kind, args in experiments.job_list(budget)}
    done: dict[str, dict] = {}
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        running: dict[concurrent.futures.Future, str] = {}
        while pending or running:
            for name in [n for n in pending if all(d in done for d in experiments.dependencies(n))]:
                if len(running) >= workers:
                    break
                kind, args = pending.pop(name)
                running[pool.submit(experiments.run_job, work, budget, name, kind, args)] = name
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                done[name] = future.result()  # a failed job ends the run, with its traceback
                experiments._log(f"{name}: done in {done[name]['seconds']:.0f} s")
    return list(done.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidgen.shapes.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "reproduce_out"), help="the work folder (resumable)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="full", help="full, or smoke (plumbing only)")
    parser.add_argument("--workers", type=int, default=2, help="parallel jobs, one CPU thread each")
    parser.add_argument("--results", default=None,
                        help="folder for RESULTS.md's data and figure (default: docs/ for the full budget, "
                             "the work folder for smoke)")
    parser.add_argument("--ship", action=argparse.BooleanOptionalAction, default=None,
                        help="copy the chosen video model into the package as the built-in model "
                             "(default: on for the full budget)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected a positive integer, got {args.workers}")
    budget = BUDGETS[args.budget]
    full = args.budget == "full"
    results_dir = args.results or (os.path.join(ROOT, "docs") if full else args.work)
    ship = full if args.ship is None else args.ship
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    experiments._log(f"budget {args.budget}: base models")
    experiments.build_base(args.work, budget)
    base_seconds = time.perf_counter() - started
    experiments._log(f"base models ready after {base_seconds:.0f} s; {len(experiments.job_list(budget))} jobs")
    results = run_jobs(args.work, budget, args.workers)
    total = time.perf_counter() - started
    run = {"budget": args.budget, "settings": experiments.budget_dict(budget), "workers": args.workers,
           "seconds": total, "base_seconds": base_seconds, "cpu": _cpu_name(), "torch": torch.__version__}
    summary = report.write(results, run, results_dir, args.work)
    if ship:
        summary["shipped"] = report.ship(args.work, results, run["settings"])
    experiments._log(f"done in {total / 60:.1f} min: {', '.join(summary.values())}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
