"""``vidgen bench [NAME...]``: run the GPU benchmarks of a source checkout (``benchmarks/bench_*.py``).

Each benchmark writes CSV + JSON + PNG to ``benchmarks/results/``, tagged with the GPU, clocks,
driver, versions and commit, with the ceilings (copy bandwidth, bf16 matmul) measured in the run.
``--report`` then regenerates README's results section and speedup plot from those files
(``python -m tools.report``); ``--report-only`` does that alone, without a GPU.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def _checkout() -> str:
    """The source checkout this vidgen is installed from (editable install), which holds ``benchmarks/`` and ``tools/``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not all(os.path.isfile(os.path.join(root, package, "__init__.py")) for package in ("benchmarks", "tools")):
        raise SystemExit("vidgen bench: the benchmarks/ and tools/ folders of a vidgen source checkout are needed "
                         "(pip install -e . from the repository)")
    return root


def available() -> list[str]:
    folder = os.path.join(_checkout(), "benchmarks")
    return sorted(name[len("bench_"):-len(".py")] for name in os.listdir(folder)
                  if name.startswith("bench_") and name.endswith(".py"))


def _run_module(module: str, args: list[str]) -> int:
    """``python -m <module>`` in the checkout, in its own process: the checkout's packages are imported
    there, never into this one, and a benchmark that loses its CUDA context ends alone."""
    return subprocess.call([sys.executable, "-m", module, *args], cwd=_checkout())


def build_parser():
    from . import _args

    parser = _args.parser("vidgen bench", __doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(available())})")
    parser.add_argument("--quick", action="store_true", help="the first shape of each benchmark only")
    parser.add_argument("--report", action="store_true",
                        help="afterwards, regenerate README's results section and plot from benchmarks/results/")
    parser.add_argument("--report-only", action="store_true",
                        help="run no benchmark; only regenerate the report from the existing result files")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report_only:
        if args.names or args.quick:
            parser.error("--report-only runs no benchmark: drop the benchmark names and --quick")
        return _report()
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available())}")
    if not torch.cuda.is_available():
        print("vidgen bench: no CUDA GPU visible; the benchmarks measure GPU kernels and would report nothing "
              "meaningful here", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        # keep going: one broken benchmark must not hide the others' results
        if _run_module(f"benchmarks.bench_{name}", ["--quick"] if args.quick else []) != 0:
            failed.append(name)
            print(f"bench_{name} failed (its output above says why)", file=sys.stderr)
    report_status = _report() if args.report else 0  # also after a failure: the others' results are new
    return 1 if failed else report_status


def _report() -> int:
    """README's status and results sections and speedup plot from ``benchmarks/results/`` (no GPU needed)."""
    return _run_module("tools.report", [])
