"""``vidgen bench [NAME...]``: run the GPU benchmarks of a source checkout (``benchmarks/bench_*.py``).

Each benchmark writes CSV + JSON + PNG to ``benchmarks/results/``, tagged with the GPU, clocks,
driver, versions and commit, with the ceilings (copy bandwidth, bf16 matmul) measured in the run.
``--report`` then regenerates README's results section and speedup plot from those files
(``benchmarks/report.py``); ``--report-only`` does that alone, without a GPU.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import torch


def _benchmarks_package():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(root, "benchmarks")):
        raise SystemExit("vidgen bench: the benchmarks/ folder of a vidgen source checkout is needed "
                         "(pip install -e . from the repository)")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks")


def available() -> list[str]:
    package = _benchmarks_package()
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))


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
        print(f"== {name}")
        module = importlib.import_module(f"benchmarks.bench_{name}")
        try:
            module.main(["--quick"] if args.quick else [])
        except Exception as exc:  # keep going: one broken benchmark must not hide the others' results
            failed.append(name)
            print(f"bench_{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    report_status = _report() if args.report else 0  # also after a failure: the others' results are new
    return 1 if failed else report_status


def _report() -> int:
    """README's results section and speedup plot from ``benchmarks/results/`` (``benchmarks/report.py``)."""
    _benchmarks_package()
    return importlib.import_module("benchmarks.report").main([])
