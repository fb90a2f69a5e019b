"""``make gpu-check``: one bounded run on a lent GPU machine that installs, validates and benchmarks.

    python3 -m benchmarks.gpu_check [--deadline S] [--phases NAME,...] [--skip NAME,...] [--dry-run]

Made for the GPU machine of ``../shared/gpu/README.md`` (Python 3.12, torch, triton, nvcc,
compute-sanitizer, pytest-xdist and pytest-timeout in its image; no network; diffusers and av
carried as wheels in ``.whl/`` from ``../shared/gpu/fetch-wheels.sh``), and for the device tool's
limits: every phase runs under a cap cut to the time left, so the whole run ends inside
``DEADLINE`` seconds (default 540, 9 minutes), and at most 8 files come back from ``$OUT``.

Phases, in order (``--phases``/``--skip`` take these names or the groups setup, sanitize, bench):

* setup: ``nvidia-smi``; the carried wheels into a private ``--target`` folder; vidgen as an
  editable install without network (a prebuilt ``vidgen/_lib/libvidgen_cuda*.so``, carried
  along, is kept: ``VIDGEN_SKIP_CUDA_BUILD=1``); ``vidgen info``; the run's tags (GPU, driver,
  versions, commit: ``VIDGEN_COMMIT`` when the tree has no git, as on the GPU machine).
* tests: the suite on CUDA tensors (``VIDGEN_TEST_DEVICE=cuda``, ``-n 14``, a per-test
  timeout, ``tests/test_aot_compile.py`` excluded), JUnit XML kept.
* sanitize: ``benchmarks/sanitize_kernels.py`` once plainly (compiles every kernel, checks the
  outputs are written), then under ``compute-sanitizer --tool memcheck`` and ``--tool
  racecheck``. It shares the GPU with the tests (run at the same time unless ``--sequential``):
  neither measures time, and it saves the lease the sanitizer's minutes. A CUDA error ends the
  sanitized process; the entries not yet begun run again in a fresh one.
* bench: the benchmarks, most telling first, each with its cap (the torch.compile and
  FlexAttention peers compile for 30-90 s per shape, so the frame-attention benchmark runs the
  gather+SDPA peer only): frame attention, temporal attention, ``benchmarks/sweep_frame_attention.py``
  and ``benchmarks/profile_step.py`` (only if those files exist), noise, guidance, end to end
  (its SD1.5-size random model is built on the CPU during the tests).

Outputs: logs and the JUnit XML in the work folder (``$OUT`` or ``./gpu-out``; a folder of
its own under /tmp when ``$OUT`` is set, which then receives ``run.log``, ``summary.txt``,
``tests.xml``, the validation report, ``logs.tgz`` and ``results.tgz``: the new files of
``benchmarks/results/`` and the sweep's ``kernels/frame_attention_tuned.json`` if it rewrote it,
to unpack in the repository root). The validation report
(``benchmarks/results/validation-<GPU>-<date>.json``: device, driver, versions, commit, date,
each phase, pass/fail counts per test file, the sanitizer's verdict per entry and a status per
kernel: "correct on GPU", "failed" or "not run") feeds the README's status section
(``benchmarks/report.py``). The last thing printed is a one-screen summary.

``--dry-run`` (or ``GPU_CHECK_DRY_RUN=1``) runs the same plumbing on a CPU machine: trivial
stand-ins for the GPU commands, the test phase on the CPU-sized checks of
``tests/test_real_shapes.py``, the kernel driver on tiny shapes through Triton's interpreter,
and the report into the work folder instead of ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
VALIDATION_PREFIX = "validation-"
# Results written outside benchmarks/results/ that come back in results.tgz when a phase rewrote them.
TUNED_TABLES = [os.path.join(ROOT, "kernels", "frame_attention_tuned.json")]  # benchmarks/sweep_frame_attention.py
SITE = "/tmp/vidgen-gpu-check-site"        # --target folder of the carried wheels
REPORT_RESERVE_S = 20                      # kept back at every cap for the report and the summary
KILL_GRACE_S = 8                           # after SIGINT (pytest writes its JUnit XML), before SIGKILL
SANITIZER_TOOLS = ("memcheck", "racecheck")
SANITIZER_PREFIX = "========= "
# A line of the sanitizer's that reports a finding (not its banner or a zero summary).
FINDING = re.compile(r"^=+ (Invalid |Error|Warning|Program hit|Race reported|Barrier error|Uninitialized|"
                     r"Out-of-range|Misaligned|Malloc|Free|Cuda API failed)")

# Kernel -> the evidence of it: tests ((file, regex the test name must match)) and sanitizer entries.
KERNELS = {
    "correlated_noise (Triton)": ([("tests/test_noise.py", r"^(?!.*add_noise)")], [r"^correlated_noise$"]),
    "add_noise (Triton)": ([("tests/test_noise.py", r"add_noise")], [r"^add_noise$"]),
    "guided_step (CUDA library)": ([("tests/test_cuda_library.py", "")], [r"^guided_step_cuda$"]),
    "guided_step (Triton)": ([("tests/test_guidance.py", "")], [r"^guided_step_triton$"]),
    "frame_attention (Triton, fwd+bwd)": ([("tests/test_frame_attention.py", ""),
                                           ("tests/test_frame_attention_autotune.py", ""),
                                           ("tests/test_real_shapes.py", r"frame_attention")],
                                          [r"^frame_attention_"]),
    "temporal_attention (Triton, fwd+bwd)": ([("tests/test_temporal_attention.py", ""),
                                              ("tests/test_real_shapes.py", r"temporal_attention")],
                                             [r"^temporal_attention_"]),
}
CORRECT, FAILED, NOT_RUN = "correct on GPU", "failed", "not run"


@dataclasses.dataclass
class Bench:
    name: str
    cap_s: int                # what it took on the first H200 run, with some room
    min_s: int                # less than this left: skipped (it could not write its results)
    argv: list[str]           # after ``python3 -m``
    optional_file: str = ""   # run only when this file exists


BENCHES = [  # most telling first: the noise and guidance --quick shapes are launch-bound (FINDINGS.md)
    Bench("bench-frame", 80, 45, ["benchmarks.bench_frame_attention", "--suites", "sd15", "--frames", "16",
                                  "--modes", "sparse_causal", "--peers", "sdpa_gather"]),
    Bench("bench-temporal", 70, 45, ["benchmarks.bench_temporal_attention", "--quick", "--frames", "16",
                                     "--skip-module"]),
    # The full sweep takes up to 4 minutes (its own --budget-s); here it gets a quick pass inside its
    # cap, most telling cases first, and writes what it measured at the budget or at SIGINT.
    Bench("sweep-frame-attention", 90, 45, ["benchmarks.sweep_frame_attention", "--quick", "--budget-s", "80"],
          "benchmarks/sweep_frame_attention.py"),
    Bench("profile-step", 60, 30, ["benchmarks.profile_step"], "benchmarks/profile_step.py"),
    Bench("bench-noise", 45, 30, ["benchmarks.bench_noise", "--quick"]),
    Bench("bench-guidance", 35, 25, ["benchmarks.bench_guidance", "--quick"]),
    Bench("bench-e2e", 120, 90, ["benchmarks.bench_e2e", "--quick", "--cases", "tune-a-video"]),
]
SETUP = ["gpu-info", "wheels", "install", "info", "environment"]
SANITIZE = ["sanitize-plain", *SANITIZER_TOOLS]
GROUPS = {"setup": SETUP, "sanitize": SANITIZE, "bench": [b.name for b in BENCHES]}
ALL_PHASES = [*SETUP, "tests", *SANITIZE, *GROUPS["bench"]]
MIN_USEFUL_S = 20         # a phase with less time than this left is skipped rather than started


@dataclasses.dataclass
class Phase:
    name: str
    status: str           # ok, failed (rc), timed out, skipped (why)
    seconds: float = 0.0
    cap_s: int = 0
    rc: int | None = None
    log: str = ""


# ----------------------------------------------------------------------------------------------
# Running commands under a deadline
# ----------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, deadline_s: int, work: str, dry_run: bool):
        self.start, self.deadline_s, self.work, self.dry_run = time.monotonic(), deadline_s, work, dry_run
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.phases: list[Phase] = []
        self._lock = threading.Lock()
        self._run_log = open(os.path.join(work, "run.log"), "a", encoding="utf-8")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_DEFAULT_FP_FUSION="1")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def say(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)
            self._run_log.write(text + "\n")
            self._run_log.flush()

    def record(self, phase: Phase) -> Phase:
        with self._lock:
            self.phases.append(phase)
        detail = f" rc={phase.rc}" if phase.rc not in (None, 0) else ""
        self.say(f"-- {phase.name}: {phase.status}{detail} ({phase.seconds:.0f} s, cap {phase.cap_s} s) "
                 f"at {self.elapsed():.0f} s")
        return phase

    def skip(self, name: str, why: str) -> Phase:
        return self.record(Phase(name, f"skipped ({why})"))

    def run(self, name: str, argv: list[str], want_s: float, env: dict | None = None,
            min_s: float = MIN_USEFUL_S) -> Phase:
        """Runs ``argv`` (its own process group, output to ``logs/<name>.log``) for at most
        ``want_s`` seconds, cut to what the deadline leaves; SIGINT then SIGKILL at the cap."""
        cap = int(min(want_s, self.left() - REPORT_RESERVE_S - KILL_GRACE_S))
        if cap < min(min_s, want_s):
            return self.skip(name, f"{max(self.left(), 0):.0f} s left")
        log = os.path.join(self.logs, f"{name}.log")
        command = " ".join(argv)
        self.say(f"== {name} (cap {cap} s): {command if len(command) < 160 else command[:150] + ' ...'}")
        began = time.monotonic()
        with open(log, "a", encoding="utf-8") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = process.wait(timeout=cap)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timed out"
                _end_group(process)
        return self.record(Phase(name, status, time.monotonic() - began, cap, rc, log))

    def close(self) -> None:
        self._run_log.close()


def _end_group(process: subprocess.Popen) -> None:
    """SIGINT to the whole process group (pytest then writes its report; xdist workers stop), then
    SIGKILL to whatever of the group is left, so nothing of a stopped phase holds the GPU."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=KILL_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def _tail(path: str, lines: int, pattern: str | None = None) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return []
    if pattern:
        text = [line for line in text if re.search(pattern, line)]
    return text[-lines:]


# ----------------------------------------------------------------------------------------------
# Reading what the phases left
# ----------------------------------------------------------------------------------------------
def test_file_of(classname: str, name: str) -> str:
    """``tests.test_noise`` (or ``tests.test_noise.TestX``) -> ``tests/test_noise.py``; a collection
    error has an empty classname and the module path as its name."""
    parts = (classname or name).split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_"):
            return "/".join(parts[:i + 1]) + ".py"
    return "/".join(parts) + ".py"


def read_junit(path: str) -> dict | None:
    """{"files": {file: {passed, failed, errors, skipped}}, "totals": {...}, "failed": [ids],
    "cases": [(file, name, outcome)]} from pytest's JUnit XML; None when there is none."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    files: dict[str, dict[str, int]] = {}
    cases, failed = [], []
    for case in root.iter("testcase"):
        file = test_file_of(case.get("classname", ""), case.get("name", ""))
        children = {child.tag for child in case}
        outcome = ("errors" if "error" in children else "failed" if "failure" in children
                   else "skipped" if "skipped" in children else "passed")
        counts = files.setdefault(file, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        counts[outcome] += 1
        cases.append((file, case.get("name", ""), outcome))
        if outcome in ("failed", "errors"):
            failed.append(f"{file}::{case.get('name', '')}")
    totals = {key: sum(c[key] for c in files.values()) for key in ("passed", "failed", "errors", "skipped")}
    return {"files": dict(sorted(files.items())), "totals": totals, "failed": failed, "cases": cases}


def read_sanitizer_log(text: str, names: list[str]) -> dict[str, dict]:
    """Per sanitize_kernels entry: {"status": clean | errors | failed | crashed | not run, "findings": n,
    "detail": first finding or message}, from one or more runs' output (later runs fill what
    earlier ones left not run). A finding is attributed to the entry between whose markers it
    appears; findings outside any entry go to ``"(outside entries)"``."""
    from benchmarks.sanitize_kernels import BEGIN, END, SKIP

    results = {name: {"status": "not run", "findings": 0, "detail": ""} for name in names}
    current = None
    for line in text.splitlines():
        if line.startswith(BEGIN):
            current = line[len(BEGIN):].strip()
            results.setdefault(current, {"findings": 0, "detail": ""}).update(status="crashed", detail="")
            results[current]["findings"] = 0
        elif line.startswith(END):
            name, _, verdict = line[len(END):].strip().partition(" ")
            entry = results.setdefault(name, {"findings": 0, "detail": ""})
            if entry["findings"]:
                entry["status"] = "errors"
            elif verdict == "ok":
                entry["status"] = "clean"
            else:
                entry.update(status="failed", detail=verdict.removeprefix("FAILED: "))
            current = None
        elif line.startswith(SKIP):
            name, _, why = line[len(SKIP):].strip().partition(": ")
            results.setdefault(name, {"findings": 0}).update(status="not run", detail=why)
        elif FINDING.match(line):
            entry = results.setdefault(current or "(outside entries)",
                                       {"status": "errors", "findings": 0, "detail": ""})
            entry["findings"] += 1
            entry["status"] = "errors"
            if not entry["detail"]:
                entry["detail"] = line.removeprefix(SANITIZER_PREFIX).strip()
    return results


def kernel_statuses(junit: dict | None, sanitizer: dict[str, dict[str, dict]],
                    tests_finished: bool = True) -> dict[str, dict]:
    """Per kernel: "correct on GPU" when its tests ran (in a test phase that finished, not one
    stopped at its cap) and passed, and each of its kernel-driver entries came back clean under
    both sanitizer tools (and in the plain run, when there was one); "failed" when a test or an
    entry failed; else "not run" (evidence missing)."""
    statuses = {}
    for kernel, (test_specs, entry_patterns) in KERNELS.items():
        counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        for file, name, outcome in (junit or {}).get("cases", []):
            if any(file == spec_file and re.search(spec, name) for spec_file, spec in test_specs):
                counts[outcome] += 1
        verdicts = {tool: {name: result for name, result in entries.items()
                           if any(re.search(p, name) for p in entry_patterns)}
                    for tool, entries in sanitizer.items()}
        bad_entries = [f"{tool} {name}: {r['status']}" + (f" ({r['detail']})" if r.get("detail") else "")
                       for tool, entries in verdicts.items() for name, r in entries.items()
                       if r["status"] in ("errors", "failed", "crashed")]
        complete = (tests_finished and counts["passed"] > 0 and all(tool in verdicts and verdicts[tool] for tool in SANITIZER_TOOLS)
                    and all(r["status"] == "clean" for entries in verdicts.values() for r in entries.values()))
        if counts["failed"] or counts["errors"] or bad_entries:
            status = FAILED
        elif complete:
            status = CORRECT
        else:
            status = NOT_RUN
        statuses[kernel] = {"status": status, "tests": counts,
                            "sanitizer": {tool: {n: r["status"] for n, r in entries.items()}
                                          for tool, entries in verdicts.items()},
                            "problems": bad_entries[:10]}
    return statuses


# ----------------------------------------------------------------------------------------------
# The phases
# ----------------------------------------------------------------------------------------------
def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _echo(text: str) -> list[str]:
    return _python("-c", f"print({text!r})")


def setup(runner: Runner, wanted: set[str]) -> None:
    dry = runner.dry_run
    if "gpu-info" in wanted:
        runner.run("gpu-info", _echo("dry run: nvidia-smi") if dry else
                   ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used",
                    "--format=csv"], 20)
    wheels = sorted(glob.glob(os.path.join(ROOT, ".whl", "*.whl")))
    if "wheels" in wanted:
        if not wheels:
            runner.skip("wheels", "no .whl/*.whl: diffusers and av missing, their tests fail or skip")
        else:
            runner.run("wheels", _echo(f"dry run: pip install {len(wheels)} wheels") if dry else _python(
                "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                "--target", SITE, *wheels), 60)
    if os.path.isdir(SITE) and not dry:  # installed now, or by an earlier call on this (still warm) machine
        runner.env["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, runner.env.get("PYTHONPATH")]))
    if "install" in wanted:
        prebuilt = glob.glob(os.path.join(ROOT, "vidgen", "_lib", "libvidgen_cuda*.so"))
        if prebuilt:
            runner.env["VIDGEN_SKIP_CUDA_BUILD"] = "1"  # built with nvcc elsewhere; loads as built (shared/gpu)
        runner.say(f"   CUDA library: {'prebuilt ' + os.path.relpath(prebuilt[0], ROOT) if prebuilt else 'built here'}")
        runner.run("install", _echo("dry run: pip install -e .") if dry else _python(
            "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."), 150)
    if "info" in wanted:
        phase = runner.run("info", _python("-m", "vidgen.cli", "info"), 40)
        for line in _tail(phase.log, 40, r"CUDA library|loaded|GPU|  \d: |triton|torch  "):
            runner.say(f"   {line.strip()}")


def capture_environment(runner: Runner) -> dict:
    """The run's tags, as benchmark result files carry them (benchmarks/harness.py)."""
    path = os.path.join(runner.work, "environment.json")
    code = ("import json, sys; from benchmarks import harness; "
            f"json.dump(harness.environment(), open({path!r}, 'w'), indent=1, default=str)")
    runner.run("environment", _python("-c", code), 40)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "commit": runner.env.get("VIDGEN_COMMIT", "unknown"), "gpu": None}


def run_tests(runner: Runner, workers: int) -> str:
    junit = os.path.join(runner.work, "tests.xml")
    if runner.dry_run:  # the CPU-sized checks of the real-shape tests, through the interpreter
        argv = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_real_shapes.py", "-k",
                       "tiny or covered or comparison or chunked", f"--junitxml={junit}")
        runner.run("tests", argv, 120)
        return junit
    argv = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "--ignore=tests/test_aot_compile.py", "-rfE",
                   f"--junitxml={junit}")
    if workers > 1 and importlib.util.find_spec("xdist"):
        argv += ["-n", str(workers)]
    if importlib.util.find_spec("pytest_timeout"):
        argv += ["--timeout=150"]
    env = dict(runner.env, VIDGEN_TEST_DEVICE="cuda")
    phase = runner.run("tests", argv, 210, env=env)
    for line in _tail(phase.log, 25, r"^(FAILED|ERROR)|passed|failed"):
        runner.say(f"   {line}")
    return junit


def run_sanitizer(runner: Runner, tools: list[str]) -> dict[str, dict[str, dict]]:
    """The kernel driver plainly (``sanitize-plain``: compiles every kernel, checks the outputs),
    then under each sanitizer tool, as ``tools`` asks; a process that stops early (a CUDA error
    ends the context) is followed by one for the entries it did not begin."""
    from benchmarks.sanitize_kernels import BEGIN, NAMES

    driver = _python("-m", "benchmarks.sanitize_kernels")
    env = dict(runner.env)
    if runner.dry_run:
        driver += ["--device", "cpu", "--tiny"]
        env["TRITON_INTERPRET"] = "1"
    results: dict[str, dict[str, dict]] = {}
    caps = {"sanitize-plain": 45, "memcheck": 80, "racecheck": 80}
    for tool, want_s in ((t, caps[t]) for t in tools):
        prefix = []
        if tool != "sanitize-plain" and not runner.dry_run:
            # Each tensor its own cudaMalloc, so an access past its end leaves the allocation and
            # memcheck sees it (the caching allocator would hide it inside a larger block).
            env = dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
            # API errors off: torch and Triton probe the driver with calls that are meant to fail.
            # No launch timeout: under the tests' load the process may take long to attach; the cap bounds it.
            prefix = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "86", "--report-api-errors", "no",
                      "--print-limit", "20", "--launch-timeout", "0"]
        remaining, text, ends = list(NAMES), "", time.monotonic() + want_s
        while remaining:
            phase = runner.run(tool, prefix + driver + ["--kernel", *remaining], ends - time.monotonic(), env=env,
                               min_s=10)
            if phase.status.startswith("skipped"):
                break
            with open(phase.log, encoding="utf-8", errors="replace") as f:
                text = f.read()  # every attempt's output, in order: later attempts fill in what earlier ones left
            found = read_sanitizer_log(text, NAMES)
            still = [n for n in remaining if found[n]["status"] == "not run" and not found[n]["detail"]]
            if phase.status == "timed out" or still == remaining:
                break  # out of time, or no entry began: another attempt would end the same way
            remaining = still  # empty when the driver went through all it was given
        results[tool] = read_sanitizer_log(text, NAMES)
        begun = re.findall(rf"^{re.escape(BEGIN)} (\S+)", text, flags=re.M)
        if phase.status == "timed out" and begun and results[tool][begun[-1]]["status"] == "crashed":
            results[tool][begun[-1]]["status"] = "timed out"  # stopped at the cap, not by a fault
        if tool != "sanitize-plain" and not runner.dry_run:
            env.pop("PYTORCH_NO_CUDA_MEMORY_CACHING", None)
    return results


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
        argv = _echo(f"dry run: python3 -m {' '.join(bench.argv)}") if runner.dry_run else _python("-m", *bench.argv)
        phase = runner.run(bench.name, argv, bench.cap_s, min_s=bench.min_s)
        for line in _tail(phase.log, 6, r"(?i)^(?!.*warn).*(ms|x |error|Traceback|results)"):
            runner.say(f"   {line[:150]}")


# ----------------------------------------------------------------------------------------------
# Report and summary
# ----------------------------------------------------------------------------------------------
def validation_report(environment: dict, runner: Runner, junit: dict | None, sanitizer: dict) -> dict:
    return {
        "validation": 1,  # schema version; benchmarks/report.py reads these files for the README's status
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
    env = report["environment"]
    gpu = (env.get("gpu") or "cpu").replace(" ", "_").replace("/", "_")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{VALIDATION_PREFIX}{gpu}-{env['date'][:10]}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    return path


def summary(report: dict, report_path: str, shipped: list[str]) -> str:
    env = report["environment"]
    lines = [f"==== vidgen gpu-check{' (dry run)' if report['dry_run'] else ''}: {env.get('gpu') or 'no GPU'}, "
             f"driver {env.get('driver', '-')}, torch {env.get('torch')}, triton {env.get('triton')}, "
             f"commit {env.get('commit')}, {env.get('date')}"]
    phases = [f"{p['name']} " + ("" if p["status"] == "ok" else p["status"].split(" (")[0] + " ")
              + f"{p['seconds']:.0f}s" for p in report["phases"]]
    lines += textwrap.wrap("phases: " + ", ".join(phases), width=150, subsequent_indent="  ")
    tests = report["tests"]
    if tests is None:
        lines.append("tests: no JUnit report (the test phase did not run or was killed before writing it)")
    else:
        t = tests["totals"]
        lines.append(f"tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped")
        lines += [f"  {test}" for test in tests["failed"][:8]]
        if len(tests["failed"]) > 8:
            lines.append(f"  ... and {len(tests['failed']) - 8} more (tests.xml)")
    for tool, entries in report["sanitizer"].items():
        by_status: dict[str, list[str]] = {}
        for name, result in entries.items():
            by_status.setdefault(result["status"], []).append(name)
        clean = len(by_status.pop("clean", []))
        others = "; ".join(f"{status}: {', '.join(names) if len(names) <= 4 else f'{len(names)} entries'}"
                           for status, names in sorted(by_status.items()))
        lines.append(f"{tool}: {clean} of {len(entries)} clean" + (f"; {others}" if others else ""))
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


def ship(runner: Runner, out_dir: str, report_path: str, junit_path: str) -> list[str]:
    """At most 8 files into ``out_dir`` (the device tool's limit): tests.xml, the report, logs.tgz
    and results.tgz (new files of benchmarks/results/ and ``TUNED_TABLES``, paths from the repo root) now; run.log and
    summary.txt, which main writes last, are in the returned list too."""
    os.makedirs(out_dir, exist_ok=True)
    shipped = ["run.log", "summary.txt"]
    for path in (junit_path, report_path):
        if os.path.exists(path) and os.path.dirname(os.path.abspath(path)) != os.path.abspath(out_dir):
            with open(path, "rb") as src, open(os.path.join(out_dir, os.path.basename(path)), "wb") as dst:
                dst.write(src.read())
        if os.path.exists(path):
            shipped.append(os.path.basename(path))
    with tarfile.open(os.path.join(out_dir, "logs.tgz"), "w:gz") as tar:
        tar.add(runner.logs, arcname="logs")
        environment = os.path.join(runner.work, "environment.json")
        if os.path.exists(environment):
            tar.add(environment, arcname="logs/environment.json")
    shipped.append("logs.tgz")
    started = time.time() - runner.elapsed()
    new = [p for p in [*glob.glob(os.path.join(RESULTS_DIR, "*")), *filter(os.path.exists, TUNED_TABLES)]
           if os.path.getmtime(p) >= started - 1]
    if new and not runner.dry_run:
        with tarfile.open(os.path.join(out_dir, "results.tgz"), "w:gz") as tar:
            for path in sorted(new):
                tar.add(path, arcname=os.path.relpath(path, ROOT))
        shipped.append(f"results.tgz ({len(new)} files)")
    return shipped


# ----------------------------------------------------------------------------------------------
def _phase_set(spec: str) -> set[str]:
    names = set()
    for name in filter(None, (s.strip() for s in spec.split(","))):
        if name in GROUPS:
            names.update(GROUPS[name])
        elif name in ALL_PHASES:
            names.add(name)
        else:
            raise SystemExit(f"gpu_check: unknown phase {name!r}; expected {', '.join([*GROUPS, *ALL_PHASES])}")
    return names


def _commit() -> str:
    """``VIDGEN_COMMIT`` if given (the GPU machine gets the tree without git), else git's."""
    if os.environ.get("VIDGEN_COMMIT"):
        return os.environ["VIDGEN_COMMIT"]
    try:
        commit = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                        text=True, stderr=subprocess.DEVNULL).strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=int, default=int(os.environ.get("DEADLINE", 540)),
                        help="seconds the whole run may take (env DEADLINE; default 540)")
    parser.add_argument("--phases", default=os.environ.get("GPU_CHECK_PHASES", ",".join(ALL_PHASES)),
                        help="comma-separated phases or groups to run (default: all)")
    parser.add_argument("--skip", default=os.environ.get("GPU_CHECK_SKIP", ""), help="phases or groups to leave out")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GPU_CHECK_WORKERS", 14)))
    parser.add_argument("--sequential", action="store_true", help="sanitizer after the tests, not beside them")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN") == "1",
                        help="the plumbing with stand-in commands, on any machine (env GPU_CHECK_DRY_RUN=1)")
    args = parser.parse_args(argv)
    wanted = _phase_set(args.phases) - _phase_set(args.skip)

    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "gpu-out")
    work = tempfile.mkdtemp(prefix="vidgen-gpu-check-") if os.environ.get("OUT") else out_dir
    runner = Runner(args.deadline, work, args.dry_run)
    runner.env["VIDGEN_COMMIT"] = _commit()  # benchmarks/harness.py tags result files with it
    runner.env.setdefault("VIDGEN_CACHE", os.path.join("/tmp", "vidgen-gpu-check-cache"))
    if args.dry_run:
        runner.env.pop("VIDGEN_TEST_DEVICE", None)
    runner.say(f"==== gpu-check: deadline {args.deadline} s, phases {', '.join(p for p in ALL_PHASES if p in wanted)}"
               f"{', dry run' if args.dry_run else ''}; work {work}, out {out_dir}")

    setup(runner, wanted)
    environment = capture_environment(runner) if "environment" in wanted else {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": runner.env["VIDGEN_COMMIT"], "gpu": None}

    model_build = None
    if "bench-e2e" in wanted and not args.dry_run:  # on the CPU while the GPU runs the tests
        with open(os.path.join(runner.logs, "model.log"), "w") as log:
            model_build = subprocess.Popen(
                _python("-c", "from vidgen import default_model; default_model.ensure('sd15')"), cwd=ROOT,
                env=runner.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    sanitizer: dict = {}
    tools = [tool for tool in SANITIZE if tool in wanted]
    beside_tests = bool(tools) and "tests" in wanted and not args.sequential

    def sanitize() -> None:
        try:
            sanitizer.update(run_sanitizer(runner, tools))
        except Exception as exc:  # noqa: BLE001 - the report still gets written, with the sanitizer not run
            runner.say(f"-- sanitizer phases broke off: {type(exc).__name__}: {exc}")

    sanitize_thread = threading.Thread(target=sanitize)
    if beside_tests:
        sanitize_thread.start()
    junit_path = run_tests(runner, args.workers) if "tests" in wanted else os.path.join(work, "tests.xml")
    if beside_tests:
        sanitize_thread.join()
    elif tools:
        sanitize()

    run_benches(runner, wanted, model_build)
    if model_build is not None and model_build.poll() is None:
        _end_group(model_build)

    junit = read_junit(junit_path)
    report = validation_report(environment, runner, junit, sanitizer)
    report_path = write_report(report, os.path.join(work, "results") if args.dry_run else RESULTS_DIR)
    shipped = ship(runner, out_dir, report_path, junit_path)
    text = summary(report, report_path, shipped)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    runner.say(text)
    runner.close()
    if os.path.abspath(work) != os.path.abspath(out_dir):
        with open(os.path.join(work, "run.log"), "rb") as src, open(os.path.join(out_dir, "run.log"), "wb") as dst:
            dst.write(src.read())
    failed_kernels = [k for k, v in report["kernels"].items() if v["status"] == FAILED]
    return 1 if failed_kernels or (junit and (junit["totals"]["failed"] or junit["totals"]["errors"])) else 0


if __name__ == "__main__":
    sys.exit(main())
