"""``vidgen bench [NAME...]``: run the GPU benchmarks of a source checkout (``benchmarks/bench_*.py``).

Each benchmark writes CSV + JSON + PNG to ``benchmarks/results/``, tagged with the GPU, clocks,
driver, versions and commit, with the ceilings (copy bandwidth, bf16 matmul) measured in the run.
``--report`` then regenerates README's results section and speedup plot from those files
(``benchmarks/report.py``); ``--report-only`` does that alone, without a GPU.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import torch


def _checkout() -> str:
    """The source checkout this vidgen is installed from (editable install), which holds ``benchmarks/``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "benchmarks", "__init__.py")):
        raise SystemExit("vidgen bench: the benchmarks/ folder of a vidgen source checkout is needed "
                         "(pip install -e . from the repository)")
    return root


def available() -> list[str]:
    folder = os.path.join(_checkout(), "benchmarks")
    return sorted(name[len("bench_"):-len(".py")] for name in os.listdir(folder)
                  if name.startswith("bench_") and name.endswith(".py"))


def _run_module(module: str, args: list[str]) -> int:
    """``python -m benchmarks.<module>`` in the checkout, in its own process: this process's import path
    stays the installed package's, and a benchmark that loses its CUDA context ends alone."""
    return subprocess.call([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=_checkout())


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
        if _run_module(f"bench_{name}", ["--quick"] if args.quick else []) != 0:
            failed.append(name)
            print(f"bench_{name} failed (its output above says why)", file=sys.stderr)
    report_status = _report() if args.report else 0  # also after a failure: the others' results are new
    return 1 if failed else report_status


def _benchmarks_package():
    """The checkout's ``benchmarks`` package, loaded from its folder (sys.path is left as it is)."""
    folder = os.path.join(_checkout(), "benchmarks")
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and os.path.dirname(os.path.abspath(loaded.__file__)) == folder:
        return loaded
    spec = importlib.util.spec_from_file_location("benchmarks", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = package
    spec.loader.exec_module(package)
    return package


def _report() -> int:
    """README's results section and speedup plot from ``benchmarks/results/`` (``benchmarks/report.py``):
    pure Python, no GPU, so it runs in this process."""
    _benchmarks_package()
    return importlib.import_module("benchmarks.report").main([])
