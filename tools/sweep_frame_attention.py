"""Check and time every declared frame-attention tile config at real UNet shapes; write the tuned table.

    python -m tools.sweep_frame_attention [--quick] [--budget-s 240] [--dtypes bf16 fp16]
                                               [--suites sd15 sdxl] [--table PATH] [--tiny]

For each case -- a self-attention level of SD1.5 (N = 4096/1024/256/64 tokens per frame with
D = 40/80/160/160, 8 heads) or SDXL (N = 4096 with 10 heads, 1024 with 20, D = 64), batch 2 (CFG),
16 frames, sparse-causal (Tune-A-Video), fp16 and bf16 -- and each pass (forward, backward dq,
backward dk/dv), every candidate of ``frame_attention_tuning.tile_candidates`` is

1. checked: fresh random inputs per run (``--seed`` replays one), every output from poisoned
   memory (each ``torch.empty`` filled with NaN, as ``tests/conftest.py`` does), compared with
   the fp32 reference on the same rounded inputs: finite, and within a relative L2 error per
   dtype. A candidate that fails is reported and never chosen;
2. timed (``benchmarks/harness.time_ms``: CUDA events, L2 flushed, median and 20/80th
   percentiles), without poisoning (its memsets would be timed too).

The backward passes are timed through the public launcher, ``frame_attention_backward_triton``
with ``dq_config`` or ``dkdv_config`` set and the other kernel at its default, on the reference's
``out`` and ``lse`` (so a broken forward cannot fail the backward candidates). Calling the two
kernels directly would need a copy of the launcher's argument plumbing, which would drift from
it; the table feeds exactly these keywords, and the kernel held at its default adds the same
time to every row, so the ranking is the varied kernel's. The ``ms`` of a backward row is
therefore the whole backward call. The dq kernel also writes ``delta``, which dk/dv reads, so a
dq candidate is judged on dq, dk and dv; a dk/dv candidate on dk and dv.

A (case, pass) whose candidates all ran enters the table: the fastest correct one, keyed by
GPU arch, blocked head width, dtype, pass and N bucket (``kernels/frame_attention_tuning.py``
documents the format and reads it; this script is its only writer), merged into
``kernels/frame_attention_tuned.json`` (other archs' and keys' entries kept) and replaced
atomically. Every trial is also a row of ``benchmarks/results/sweep_frame_attention-<GPU>-<date>.{csv,json}``.

Bounded: ``--budget-s`` (default 240) is a wall-clock cap; no candidate starts after it, and what
was measured is written. SIGINT (``tools.gpu_check`` stops an overrunning phase that
way) also ends the run with everything measured so far written. A kernel that faults leaves its
process's CUDA context unusable, so the trials run in a worker process that appends each result to a file as it finishes; when a
worker dies, the candidate it was running is reported failed and a fresh worker runs the rest.
``--in-process`` skips the worker (the tests use it, with a fake timer).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import harness  # noqa: E402
from benchmarks.bench_frame_attention import SD15_LEVELS, SDXL_LEVELS  # noqa: E402

BATCH, FRAMES = 2, 16          # classifier-free guidance; a 16-frame clip
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SUITES = {"sd15": SD15_LEVELS, "sdxl": SDXL_LEVELS}
# Relative L2 error allowed per dtype: as tests/test_real_shapes.py, about five times what correct
# kernels measured on an H200 (fp16 2.9e-4, bf16 2.4e-3); a wrong kernel errs by order one. lse is
# fp32 arithmetic on exact products of the rounded inputs.
TOLERANCE = {"fp16": 1.5e-3, "bf16": 1.2e-2}
LSE_TOLERANCE = 1e-4
# Timing per candidate: (warm-up ms, repeat ms) of triton.testing.do_bench.
TIMING = {"full": (25, 150), "quick": (10, 40)}
DEFAULT_BUDGET_S = 240         # about 4 minutes: one device call beside make gpu-check's
WRITE_RESERVE_S = 8            # kept back from the budget: stopping a worker (<= 6 s) and writing
TRIAL_RESERVE_S = 10           # no trial starts this close to the end (a compile, a check, a timing)
EXIT_CUDA_ERROR = 3
RUNNING, PASSED, FAILED, NOT_RUN = "running", "passed", "failed", "not run"
BACKWARD_TIMED = {"backward_dq": "whole backward call, backward_dkdv at its default",
                  "backward_dkdv": "whole backward call, backward_dq at its default"}


@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    tokens: int
    head_dim: int
    heads: int
    dtype: str
    batch: int = BATCH
    frames: int = FRAMES

    @property
    def name(self) -> str:
        return f"{self.suite} N{self.tokens} D{self.head_dim} H{self.heads} {self.dtype}"


# A CPU run of the plumbing through Triton's interpreter (--tiny): odd N, two blockings with an
# overlapping tail block (40 = 32 + 16; 80 = 64 + 16), two forward candidates each.
TINY_LEVELS = [(17, 40, 2), (9, 80, 1)]


def plan(suites: list[str], dtypes: list[str], tiny: bool = False) -> list[Case]:
    """The cases in the order they run: the most telling first (SD1.5's D = 40 level, the most
    used; then D = 80 and SDXL), D = 160 last: the widest tiles, the likeliest to fault."""
    if tiny:
        return [Case("tiny", n, d, h, dtype, batch=1, frames=3) for n, d, h in TINY_LEVELS for dtype in dtypes]
    levels = [(suite, level) for suite in suites for level in SUITES[suite]]
    levels.sort(key=lambda item: item[1][1] >= 160)  # stable: D = 160 after everything else
    return [Case(suite, n, d, h, dtype) for suite, (n, d, h) in levels for dtype in dtypes]


def device_arch(device: torch.device) -> int:
    """Compute capability as 10 * major + minor; the interpreter runs sm_90's tile lists."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def trials(case: Case, arch: int) -> list[tuple[str, str]]:
    """(pass, config text) of every declared candidate of every pass, defaults first."""
    from vidgen.kernels import frame_attention as fa
    from vidgen.kernels import frame_attention_tuning as tuning

    d0, d1, _ = fa.head_blocks(case.head_dim)
    return [(kernel_pass, str(cfg)) for kernel_pass in tuning.PASSES
            for cfg in tuning.tile_candidates(kernel_pass, d0 + d1, case.dtype, arch)]


def trial_id(case: Case, kernel_pass: str, config: str) -> str:
    return f"{case.name} | {kernel_pass} | {config}"


# ----------------------------------------------------------------------------------------------
# Checking and timing one case (runs in the worker)
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def poisoned_outputs():
    """Every ``torch.empty`` inside is filled with NaN (ints: their max), so an output element a
    kernel does not write fails the finite check; the previous setting is restored after."""
    import torch.utils.deterministic

    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN or inf when ``actual`` has any."""
    difference = actual.double() - expected.double()
    return (torch.linalg.vector_norm(difference) / torch.linalg.vector_norm(expected.double())).item()


def judge(results: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[dict[str, float], str | None]:
    """({name: relative L2 error}, what is wrong or None) for ``name: (actual, expected, tolerance)``."""
    errors, problems = {}, []
    for name, (actual, expected, tolerance) in results.items():
        unwritten = int((~torch.isfinite(actual)).sum().item())
        if unwritten:
            problems.append(f"{name}: {unwritten} of {actual.numel()} elements non-finite")
            continue
        errors[name] = relative_l2(actual, expected)
        if not errors[name] <= tolerance:
            problems.append(f"{name}: relative L2 error {errors[name]:.3g} > {tolerance:g}")
    return errors, "; ".join(problems) or None


class CaseRunner:
    """One case's inputs, key tables and fp32 reference, and a runner for each (pass, config)."""

    def __init__(self, case: Case, device: torch.device, seed: int):
        from vidgen.kernels import frame_attention as fa

        self.case, self.device, self.fa = case, device, fa
        dtype = DTYPES[case.dtype]
        gen = torch.Generator(device).manual_seed(seed)
        shape = (case.batch, case.frames, case.tokens, case.heads, case.head_dim)
        self.q, self.k, self.v, self.dout = (torch.randn(shape, device=device, generator=gen).to(dtype)
                                             for _ in range(4))
        self.rows = fa.sparse_causal_key_frames(case.frames)
        self.table, self.counts = (t.to(device) for t in fa.prepare_key_table(torch.tensor(self.rows)))
        self.readers, self.reader_counts = fa.reverse_key_table(self.table, self.counts)
        self.scale = case.head_dim ** -0.5
        # The oracle, in fp32 on the very (rounded) inputs the kernels read: what is measured is
        # the kernels' arithmetic alone.
        q32, k32, v32 = self.q.float(), self.k.float(), self.v.float()
        self.ref_out, self.ref_lse = fa.frame_attention_reference(q32, k32, v32, self.rows, self.scale)
        self.ref_grads = fa.frame_attention_backward_reference(self.dout.float(), q32, k32, v32, self.rows, self.scale)
        # The backward runs on the reference's forward, so a broken forward fails only itself.
        self.out, self.lse = self.ref_out.to(dtype), self.ref_lse

    def launch(self, kernel_pass: str, config) -> Callable[[], tuple[torch.Tensor, ...]]:
        fa = self.fa
        if kernel_pass == "forward":
            return lambda: fa.frame_attention_forward_triton(self.q, self.k, self.v, self.table, self.counts,
                                                             self.scale, config=config)
        keyword = {"backward_dq": "dq_config", "backward_dkdv": "dkdv_config"}[kernel_pass]
        return lambda: fa.frame_attention_backward_triton(
            self.dout, self.q, self.k, self.v, self.out, self.lse, self.table, self.counts, self.readers,
            self.reader_counts, self.scale, **{keyword: config})

    def check(self, kernel_pass: str, config) -> tuple[dict[str, float], str | None]:
        tolerance = TOLERANCE[self.case.dtype]
        with poisoned_outputs():
            outputs = self.launch(kernel_pass, config)()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # a fault surfaces here, inside this trial
        if kernel_pass == "forward":
            out, lse = outputs
            return judge({"out": (out, self.ref_out, tolerance), "lse": (lse, self.ref_lse, LSE_TOLERANCE)})
        names = ("dq", "dk", "dv") if kernel_pass == "backward_dq" else ("dk", "dv")
        grads = dict(zip(("dq", "dk", "dv"), zip(outputs, self.ref_grads)))
        return judge({name: (*grads[name], tolerance) for name in names})


def harness_timer(quick: bool) -> Callable[[Callable[[], object]], dict]:
    warmup_ms, rep_ms = TIMING["quick" if quick else "full"]
    return lambda fn: harness.time_ms(fn, warmup_ms=warmup_ms, rep_ms=rep_ms)


def wall_clock_timer(fn: Callable[[], object], repeats: int = 3) -> dict:
    """Median wall-clock time: for trying the script through the interpreter, where no CUDA events
    exist. Its numbers say nothing about a GPU."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"ms": times[len(times) // 2], "ms_p20": times[0], "ms_p80": times[-1]}


def _append(rows_path: str, row: dict) -> None:
    """One JSON line, flushed: a worker that dies leaves every earlier line for the parent."""
    with open(rows_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


def sweep(cases: list[Case], rows_path: str, *, device: torch.device, timer, deadline: float, seed: int) -> int:
    """Checks and times every trial of ``cases`` not yet in ``rows_path``, appending a "running"
    row before and the result after each; stops starting trials at ``deadline`` (wall clock).
    Returns 0, or ``EXIT_CUDA_ERROR`` when a trial left the CUDA context unusable."""
    from vidgen.kernels.frame_attention import LaunchConfig

    arch = device_arch(device)
    done = set(read_rows(rows_path))
    for index, case in enumerate(cases):
        todo = [t for t in trials(case, arch) if trial_id(case, *t) not in done]
        if not todo:
            continue
        if time.time() >= deadline:
            return 0
        case_seed = seed + index
        try:
            runner = CaseRunner(case, device, case_seed)
        except Exception as exc:  # noqa: BLE001 - the reference (not a candidate) failed: nothing measured
            message = f"case setup failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            for kernel_pass, config in todo:
                _append(rows_path, {"trial": trial_id(case, kernel_pass, config), **dataclasses.asdict(case),
                                    "pass": kernel_pass, "config": config, "arch": f"sm{arch}", "seed": case_seed,
                                    "status": NOT_RUN, "problem": message[:300]})
            print(f"{case.name}: {message}", flush=True)
            if harness.is_cuda_error(exc):
                return EXIT_CUDA_ERROR
            continue
        for kernel_pass, config in todo:
            if time.time() >= deadline:
                return 0
            row = {"trial": trial_id(case, kernel_pass, config), **dataclasses.asdict(case), "pass": kernel_pass,
                   "config": config, "arch": f"sm{arch}", "seed": case_seed, "status": RUNNING}
            _append(rows_path, row)
            cfg = LaunchConfig.parse(config)
            try:
                errors, problem = runner.check(kernel_pass, cfg)
                row.update({f"rel_l2_{name}": error for name, error in errors.items()})
                if problem is None:
                    row.update(timer(runner.launch(kernel_pass, cfg)))
                row.update(status=FAILED if problem else PASSED, problem=problem)
            except Exception as exc:  # noqa: BLE001 - a candidate that raises is a failed candidate
                message = str(exc).splitlines()[0] if str(exc) else ""
                row.update(status=FAILED, problem=f"{type(exc).__name__}: {message}"[:300])
                if harness.is_cuda_error(exc):
                    row["problem"] += " (CUDA context lost)"
                    _append(rows_path, row)
                    print(_trial_line(row), flush=True)
                    return EXIT_CUDA_ERROR
            _append(rows_path, row)
            print(_trial_line(row), flush=True)
    return 0


def _trial_line(row: dict) -> str:
    head = f"{row['trial']}: "
    if row["status"] == PASSED:
        return head + f"ok {row['ms']:.3f} ms"
    return head + f"FAILED: {row.get('problem')}"


# ----------------------------------------------------------------------------------------------
# Rows, choices, the table (runs in the parent)
# ----------------------------------------------------------------------------------------------
def read_rows(rows_path: str) -> dict[str, dict]:
    """Trial id -> its latest row (a "running" row is replaced by the result that follows it)."""
    rows: dict[str, dict] = {}
    try:
        with open(rows_path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError):  # a line cut short by a killed worker
                    row = json.loads(line)
                    rows[row["trial"]] = row
    except FileNotFoundError:
        pass
    return rows


def settle_running(rows_path: str, status: str, why: str) -> list[str]:
    """Gives every trial still "running" ``status`` and ``why``: FAILED when its worker died during
    it (a fault is the candidate's), NOT_RUN when the sweep was stopped (the budget, SIGINT), so an
    interrupted candidate is neither chosen nor counted as measured."""
    stuck = [row for row in read_rows(rows_path).values() if row["status"] == RUNNING]
    for row in stuck:
        _append(rows_path, {**row, "status": status, "problem": why})
    return [row["trial"] for row in stuck]


def choose(cases: list[Case], rows: dict[str, dict], arch: int, env: dict) -> tuple[list[dict], dict]:
    """(result rows, one per planned trial, the choices marked; table entries by entry path).

    A (case, pass) gets an entry only when every candidate ran (checked and, if correct, timed):
    a choice among part of them could miss the fastest. Per (arch, width, dtype, pass), the "any"
    entry is the config correct at every measured bucket with the least total time over them."""
    from vidgen.kernels import frame_attention as fa
    from vidgen.kernels import frame_attention_tuning as tuning

    toolchain = {key: env.get(key) for key in ("gpu", "triton", "torch", "cuda", "date", "commit")}
    result_rows, entries = [], {}
    per_key: dict[tuple, list[tuple[str, dict[str, float]]]] = {}  # (arch, width, dtype, pass) -> (bucket, ms)
    for case in cases:
        d0, d1, _ = fa.head_blocks(case.head_dim)
        width = d0 + d1
        by_pass: dict[str, list[dict]] = {}
        for kernel_pass, config in trials(case, arch):
            row = rows.get(trial_id(case, kernel_pass, config)) or {
                "trial": trial_id(case, kernel_pass, config), **dataclasses.asdict(case), "pass": kernel_pass,
                "config": config, "arch": f"sm{arch}", "status": NOT_RUN,
                "problem": "not reached before the sweep stopped"}
            row = {**row, "width": width, "n_bucket": tuning.bucket_name(case.tokens), "chosen": False}
            by_pass.setdefault(kernel_pass, []).append(row)
            result_rows.append(row)
        for kernel_pass, pass_rows in by_pass.items():
            passed = [r for r in pass_rows if r["status"] == PASSED]
            if not passed or any(r["status"] not in (PASSED, FAILED) for r in pass_rows):
                continue
            best = min(passed, key=lambda r: r["ms"])
            best["chosen"] = True
            where = tuning.entry_path(kernel_pass, arch, width, case.dtype, case.tokens)
            entries[where] = {
                "config": best["config"], "ms": best["ms"], **toolchain,
                "case": f"{case.name}, B{case.batch} F{case.frames} sparse-causal",
                "timed": BACKWARD_TIMED.get(kernel_pass, "forward call"),
                "candidates_ms": {r["config"]: r["ms"] for r in passed},
                "rejected": {r["config"]: r["problem"] for r in pass_rows if r["status"] == FAILED},
            }
            per_key.setdefault(where[:-1], []).append((where[-1], {r["config"]: r["ms"] for r in passed}))
    for key, measured in per_key.items():
        everywhere = set.intersection(*(set(ms) for _, ms in measured))
        if not everywhere:
            continue
        totals = {config: sum(ms[config] for _, ms in measured) for config in everywhere}
        best = min(totals, key=totals.get)
        entries[(*key, tuning.ANY_SIZE)] = {
            "config": best, "ms_total": totals[best], "buckets": sorted(int(b) for b, _ in measured), **toolchain,
            "timed": "sum over the buckets of " + BACKWARD_TIMED.get(key[3], "forward call")}
    return result_rows, entries


def merge_entries(existing: dict, measured: dict[tuple[str, ...], dict]) -> dict:
    """``existing`` entries with each ``measured`` entry (keyed by ``tuning.entry_path``) set or
    replaced; every other entry -- other archs, widths, dtypes, passes, buckets -- is kept."""
    merged = json.loads(json.dumps(existing))  # a deep copy: the caller's dict stays as it was
    for where, entry in measured.items():
        node = merged
        for key in where[:-1]:
            child = node.get(key)
            node[key] = child = child if isinstance(child, dict) else {}
            node = child
        node[where[-1]] = entry
    return merged


def write_table(path: str, measured: dict[tuple[str, ...], dict]) -> dict:
    """Merges ``measured`` into the tuned table at ``path`` (the format ``frame_attention_tuning``
    reads) as it is on disk now and replaces the file atomically: a reader sees the old table or
    the new one, never half of one. Returns the entries."""
    from vidgen.kernels import frame_attention_tuning as tuning

    entries = merge_entries(tuning.read_entries(path), measured)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".frame_attention_tuned-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": tuning.FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the shipped table private
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return entries


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------
def _stop(process: subprocess.Popen) -> None:
    """SIGINT (the worker ends between lines), then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, 3), (signal.SIGKILL, 3)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)


def worker_command(args: argparse.Namespace, rows_path: str, deadline: float, seed: int) -> list[str]:
    """The worker's command line: the parent's choices, and a deadline for starting trials that
    leaves the last one time to finish before the parent's."""
    command = [sys.executable, "-m", "tools.sweep_frame_attention", "--worker", rows_path,
               "--deadline-epoch", repr(deadline - TRIAL_RESERVE_S), "--seed", str(seed), "--device", args.device,
               "--dtypes", *args.dtypes, "--suites", *args.suites]
    return command + ["--quick"] * args.quick + ["--tiny"] * args.tiny


def run_workers(command: list[str], rows_path: str, deadline: float, *, max_restarts: int = 20) -> None:
    """Runs ``command`` until it finishes, restarting it after a death that made progress (each
    restart skips what the rows file holds); the trial a dead worker was running is failed."""
    for _ in range(max_restarts + 1):
        finished_before = sum(r["status"] != RUNNING for r in read_rows(rows_path).values())
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            rc = process.wait(timeout=max(deadline - time.time(), 0))
        except subprocess.TimeoutExpired:
            _stop(process)
            settle_running(rows_path, NOT_RUN, "stopped at the time budget")
            return
        except KeyboardInterrupt:
            _stop(process)
            settle_running(rows_path, NOT_RUN, "interrupted")
            raise
        why = "CUDA context lost" if rc == EXIT_CUDA_ERROR else f"worker process ended (exit {rc})"
        settle_running(rows_path, FAILED, f"{why} during this candidate")
        finished_after = sum(r["status"] != RUNNING for r in read_rows(rows_path).values())
        if rc == 0 or finished_after == finished_before or time.time() >= deadline:
            return
        print(f"sweep: {why}; a fresh worker runs the remaining candidates", flush=True)


# ----------------------------------------------------------------------------------------------
def write_outputs(cases: list[Case], rows_path: str, arch: int, table_path: str | None) -> dict:
    env = harness.environment()
    result_rows, entries = choose(cases, read_rows(rows_path), arch, env)
    stem = harness.write_results("sweep_frame_attention", result_rows, env)
    if table_path and entries:
        write_table(table_path, entries)
    counts = {status: sum(r["status"] == status for r in result_rows) for status in (PASSED, FAILED, NOT_RUN)}
    for row in result_rows:
        if row["status"] == FAILED:
            print(f"rejected: {row['trial']}: {row['problem']}")
    for where, entry in sorted(entries.items()):
        if "ms" in entry:
            print(f"chosen: {'/'.join(where)}: {entry['config']} {entry['ms']:.3f} ms")
    print(f"sweep: {counts[PASSED]} candidates correct and timed, {counts[FAILED]} rejected, "
          f"{counts[NOT_RUN]} not run; "
          f"{sum('ms' in e for e in entries.values())} table entries"
          + (f" -> {os.path.relpath(table_path)}" if table_path and entries else " (no table written)")
          + f"; results {os.path.relpath(stem)}.csv/.json", flush=True)
    return {"rows": result_rows, "entries": entries, "stem": stem}


def build_parser() -> argparse.ArgumentParser:
    from vidgen.kernels import frame_attention_tuning as tuning

    parser = argparse.ArgumentParser(prog="python -m tools.sweep_frame_attention",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock cap in seconds; what was measured is written (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--quick", action="store_true", help=f"shorter timing per candidate {TIMING['quick']} "
                        f"(warm-up, repeat ms) instead of {TIMING['full']}")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=["sd15", "sdxl"])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, to try the script on a CPU (with TRITON_INTERPRET=1 and --device cpu; "
                             "--dtypes fp16 there: Triton's interpreter multiplies bf16 as integers, see "
                             "tests/conftest.py, so every bf16 candidate is rightly rejected)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=None, help="replay the inputs of an earlier run (its rows say)")
    parser.add_argument("--table", default=None,
                        help=f"table to merge into (default on CUDA: {os.path.relpath(tuning.TABLE_PATH, ROOT)}; "
                             "off CUDA none: interpreter timings are no choice)")
    parser.add_argument("--in-process", action="store_true", help="no worker process (a CUDA fault ends the sweep)")
    parser.add_argument("--worker", metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--deadline-epoch", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv=None, *, timer=None) -> int:
    """``timer``: ``fn -> {"ms": ...}`` in place of the harness's CUDA-event timing (the tests' fake)."""
    from vidgen.kernels import frame_attention_tuning as tuning

    args = build_parser().parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        harness.require_cuda()
    cases = plan(args.suites, args.dtypes, args.tiny)
    timer = timer or (harness_timer(args.quick) if device.type == "cuda" else wall_clock_timer)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if args.worker:
        try:
            return sweep(cases, args.worker, device=device, timer=timer, deadline=args.deadline_epoch, seed=seed)
        except KeyboardInterrupt:  # the parent's stop: every finished trial is already in the file
            return 130

    deadline = time.time() + args.budget_s - WRITE_RESERVE_S
    table_path = args.table or (tuning.TABLE_PATH if device.type == "cuda" else None)
    arch = device_arch(device)
    print(f"sweep: {len(cases)} cases, {sum(len(trials(c, arch)) for c in cases)} candidates, sm{arch}, "
          f"seed {seed}, budget {args.budget_s:.0f} s", flush=True)
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="vidgen-sweep-") as scratch:
        rows_path = os.path.join(scratch, "rows.jsonl")
        try:
            if args.in_process:
                sweep(cases, rows_path, device=device, timer=timer, deadline=deadline - TRIAL_RESERVE_S, seed=seed)
            else:
                run_workers(worker_command(args, rows_path, deadline, seed), rows_path, deadline)
        except KeyboardInterrupt:
            interrupted = True
            settle_running(rows_path, NOT_RUN, "interrupted")
            print("sweep: interrupted; writing what was measured", flush=True)
        write_outputs(cases, rows_path, arch, table_path)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
