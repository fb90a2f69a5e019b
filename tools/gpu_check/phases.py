"""What each phase of a run runs: setup, the tests, the kernel driver under the sanitizer, the benchmarks."""
from __future__ import annotations

import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

from tools import ROOT
from tools.gpu_check.deadline import REPORT_RESERVE_S, Runner, last_lines
from tools.gpu_check.evidence import SANITIZER_TOOLS, read_sanitizer_log
from tools.sanitize_kernels import BEGIN, NAMES

SITE = "/tmp/vidgen-gpu-check-site"        # --target folder of the carried wheels


@dataclasses.dataclass
class Bench:
    name: str
    cap_s: int                # what it takes on an H200, with some room
    min_s: int                # less than this left: skipped (it could not write its results)
    argv: list[str]           # after ``python3 -m``
    optional_file: str = ""   # run only when this file exists


BENCHES = [  # most telling first: at their --quick shapes noise and guidance are launch-bound
    Bench("bench-frame", 80, 45, ["benchmarks.bench_frame_attention", "--suites", "sd15", "--frames", "16",
                                  "--modes", "sparse_causal", "--peers", "sdpa_gather"]),
    Bench("bench-temporal", 70, 45, ["benchmarks.bench_temporal_attention", "--quick", "--frames", "16",
                                     "--skip-module"]),
    # The full sweep takes up to 4 minutes (its own --budget-s); here it gets a quick pass inside its
    # cap, most telling cases first, and writes what it measured at the budget or at SIGINT.
    Bench("sweep-frame-attention", 90, 45, ["tools.sweep_frame_attention", "--quick", "--budget-s", "80"],
          "tools/sweep_frame_attention.py"),
    Bench("profile-step", 60, 30, ["benchmarks.profile_step"], "benchmarks/profile_step.py"),
    Bench("bench-noise", 45, 30, ["benchmarks.bench_noise", "--quick"]),
    Bench("bench-guidance", 35, 25, ["benchmarks.bench_guidance", "--quick"]),
    Bench("bench-e2e", 120, 90, ["benchmarks.bench_e2e", "--quick", "--cases", "tune-a-video"]),
    # Eight shapes (four norms, two GEGLU, two residual Linear) x two passes x three peers, plus
    # Inductor compiling its peer for each; last, so that it never takes the end-to-end run's time.
    # Cap: the six-shape run's 75 s plus a third for the residual Linear's rows (an estimate until timed).
    Bench("bench-frame-group-norm", 100, 40, ["benchmarks.bench_frame_group_norm", "--quick"]),
]
SETUP = ["gpu-info", "wheels", "install", "info", "environment"]
SANITIZE = ["sanitize-plain", *SANITIZER_TOOLS]
GROUPS = {"setup": SETUP, "sanitize": SANITIZE, "bench": [b.name for b in BENCHES]}
ALL_PHASES = [*SETUP, "tests", *SANITIZE, *GROUPS["bench"]]
SANITIZE_CAPS_S = {"sanitize-plain": 45, "memcheck": 80, "racecheck": 80}


def python_argv(*args: str) -> list[str]:
    """A command line of this Python (the GPU image's ``python3``; ``.venv``'s in a dry run)."""
    return [sys.executable, *args]


def _echo(text: str) -> list[str]:
    """A stand-in command of a dry run: prints what the real one would have run."""
    return python_argv("-c", f"print({text!r})")


# ----------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------
def setup(runner: Runner, wanted: set[str]) -> None:
    if "gpu-info" in wanted:
        runner.run("gpu-info", _echo("dry run: nvidia-smi") if runner.dry_run else
                   ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used",
                    "--format=csv"], 20)
    if "wheels" in wanted:
        _install_wheels(runner)
    if os.path.isdir(SITE) and not runner.dry_run:  # installed now, or by an earlier call on this (still warm) machine
        runner.env["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, runner.env.get("PYTHONPATH")]))
    if "install" in wanted:
        _install_vidgen(runner)
    if "info" in wanted:
        phase = runner.run("info", python_argv("-m", "vidgen.cli", "info"), 40)
        for line in last_lines(phase.log, 40, r"CUDA library|loaded|GPU|  \d: |triton|torch  "):
            runner.say(f"   {line.strip()}")


def _install_wheels(runner: Runner) -> None:
    """The carried wheels (diffusers, av: the GPU image lacks them) into ``SITE``, without network."""
    wheels = sorted(glob.glob(os.path.join(ROOT, ".whl", "*.whl")))
    if not wheels:
        runner.skip("wheels", "no .whl/*.whl: diffusers and av missing, their tests fail or skip")
        return
    runner.run("wheels", _echo(f"dry run: pip install {len(wheels)} wheels") if runner.dry_run else python_argv(
        "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
        "--target", SITE, *wheels), 60)


def _install_vidgen(runner: Runner) -> None:
    """vidgen as an editable install without network, keeping a carried prebuilt CUDA library."""
    prebuilt = glob.glob(os.path.join(ROOT, "vidgen", "_lib", "libvidgen_cuda*.so"))
    if prebuilt:
        runner.env["VIDGEN_SKIP_CUDA_BUILD"] = "1"  # built with nvcc before the tree came here; it loads as built
    runner.say(f"   CUDA library: {'prebuilt ' + os.path.relpath(prebuilt[0], ROOT) if prebuilt else 'built here'}")
    runner.run("install", _echo("dry run: pip install -e .") if runner.dry_run else python_argv(
        "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."), 150)


def capture_environment(runner: Runner, wanted: set[str]) -> dict:
    """The run's tags, as benchmark result files carry them (``benchmarks.harness.environment``, in
    a phase of its own); the date and the commit alone when that phase is not wanted or fails."""
    if "environment" in wanted:
        path = os.path.join(runner.work, "environment.json")
        code = ("import json; from benchmarks import harness; "
                f"json.dump(harness.environment(), open({path!r}, 'w'), indent=1, default=str)")
        runner.run("environment", python_argv("-c", code), 40)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": runner.env["VIDGEN_COMMIT"], "gpu": None}


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
def run_tests(runner: Runner, workers: int) -> str:
    """The suite on CUDA tensors (a dry run: the CPU-sized real-shape checks); returns the JUnit XML's path."""
    junit = os.path.join(runner.work, "tests.xml")
    if runner.dry_run:  # the CPU-sized checks of the real-shape tests, through the interpreter
        argv = python_argv("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_real_shapes.py", "-k",
                           "tiny or covered or comparison or chunked", f"--junitxml={junit}")
        runner.run("tests", argv, 120)
        return junit
    argv = python_argv("-m", "pytest", "-q", "-p", "no:cacheprovider", "--ignore=tests/test_aot_compile.py", "-rfE",
                       f"--junitxml={junit}")
    if workers > 1 and importlib.util.find_spec("xdist"):
        argv += ["-n", str(workers)]
    if importlib.util.find_spec("pytest_timeout"):
        argv += ["--timeout=150"]
    env = dict(runner.env, VIDGEN_TEST_DEVICE="cuda")
    phase = runner.run("tests", argv, 210, env=env)
    for line in last_lines(phase.log, 25, r"^(FAILED|ERROR)|passed|failed"):
        runner.say(f"   {line}")
    return junit


# ----------------------------------------------------------------------------------------------
# sanitize
# ----------------------------------------------------------------------------------------------
def run_sanitizer(runner: Runner, tools: list[str]) -> dict[str, dict[str, dict]]:
    """The kernel driver plainly (``sanitize-plain``: compiles every kernel, checks the outputs),
    then under each sanitizer tool, as ``tools`` asks: ``{tool: {entry: verdict}}``."""
    driver = python_argv("-m", "tools.sanitize_kernels")
    env = dict(runner.env)
    if runner.dry_run:
        driver += ["--device", "cpu", "--tiny"]
        env["TRITON_INTERPRET"] = "1"
    results = {}
    for tool in tools:
        prefix, tool_env = [], env
        if tool != "sanitize-plain" and not runner.dry_run:
            # Each tensor its own cudaMalloc, so an access past its end leaves the allocation and
            # memcheck sees it (the caching allocator would hide it inside a larger block).
            tool_env = dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
            # API errors off: torch and Triton probe the driver with calls that are meant to fail.
            # No launch timeout: under the tests' load the process may take long to attach; the cap bounds it.
            prefix = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "86", "--report-api-errors", "no",
                      "--print-limit", "20", "--launch-timeout", "0"]
        results[tool] = _sanitize(runner, tool, prefix + driver, tool_env, SANITIZE_CAPS_S[tool])
    return results


def _sanitize(runner: Runner, tool: str, argv: list[str], env: dict, want_s: float) -> dict[str, dict]:
    """Every entry of the kernel driver under one tool within ``want_s``: a process that stops early
    (a CUDA error ends the context) is followed by one for the entries it did not begin."""
    remaining, text, ends = list(NAMES), "", time.monotonic() + want_s
    phase = None
    while remaining:
        phase = runner.run(tool, argv + ["--kernel", *remaining], ends - time.monotonic(), env=env, min_s=10)
        if phase.status.startswith("skipped"):
            break
        with open(phase.log, encoding="utf-8", errors="replace") as f:
            text = f.read()  # every attempt's output, in order: later attempts fill in what earlier ones left
        found = read_sanitizer_log(text, NAMES)
        still = [n for n in remaining if found[n]["status"] == "not run" and not found[n]["detail"]]
        if phase.status == "timed out" or still == remaining:
            break  # out of time, or no entry began: another attempt would end the same way
        remaining = still  # empty when the driver went through all it was given
    results = read_sanitizer_log(text, NAMES)
    begun = re.findall(rf"^{re.escape(BEGIN)} (\S+)", text, flags=re.M)
    if phase is not None and phase.status == "timed out" and begun and results[begun[-1]]["status"] == "crashed":
        results[begun[-1]]["status"] = "timed out"  # stopped at the cap, not by a fault
    return results


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------
def start_model_build(runner: Runner) -> subprocess.Popen:
    """The end-to-end benchmark's SD1.5-size random model, built on the CPU while the GPU runs the tests."""
    with open(os.path.join(runner.logs, "model.log"), "w") as log:
        return subprocess.Popen(python_argv("-c", "from vidgen import default_model; default_model.ensure('sd15')"),
                                cwd=ROOT, env=runner.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_benches(runner: Runner, wanted: set[str], model_build: subprocess.Popen | None) -> None:
    for bench in BENCHES:
        if bench.name not in wanted:
            continue
        if bench.optional_file and not os.path.exists(os.path.join(ROOT, bench.optional_file)):
            runner.skip(bench.name, f"no {bench.optional_file}")
            continue
        if bench.name == "bench-e2e" and model_build is not None:
            try:  # it would build the model itself otherwise, inside its own cap
                model_build.wait(timeout=max(0.0, min(60.0, runner.left() - REPORT_RESERVE_S - bench.cap_s)))
            except subprocess.TimeoutExpired:
                pass
        argv = (_echo(f"dry run: python3 -m {' '.join(bench.argv)}") if runner.dry_run
                else python_argv("-m", *bench.argv))
        phase = runner.run(bench.name, argv, bench.cap_s, min_s=bench.min_s)
        for line in last_lines(phase.log, 6, r"(?i)^(?!.*warn).*(ms|x |error|Traceback|results)"):
            runner.say(f"   {line[:150]}")
