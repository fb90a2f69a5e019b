"""Shared benchmark machinery: timing, ceilings measured in the same run, and the one result writer.

Timing uses ``triton.testing.do_bench`` (CUDA events, warm-up, the L2 cache flushed before
every repeat so a small input is not served from cache), and reports the median with the
20th/80th percentiles. Ceilings (device copy bandwidth, bf16 matmul rate) are measured in the
same process, so every row's fraction of the roofline refers to this GPU at this moment.

The result schema, the same for every benchmark (:func:`write_results`):

* ``<results>/<name>-<gpu>-<date>.json``: ``{"benchmark", "environment", "ceilings", "rows"}``;
  ``.csv``: the rows, each with every tag as an ``env_<tag>`` column;
* tags (:func:`environment`): date, commit, GPU (name, driver, clocks, memory), python, torch,
  triton, CUDA, diffusers, the CUDA library;
* row fields: a quantity ends in its unit (``ms``, ``us``, ``gbs``, ``tflops``, ``bytes``, ``gib``,
  ``seconds``); the fraction of a ceiling is ``copy_fraction`` (:func:`bandwidth`) or
  ``matmul_fraction`` (:func:`throughput`); comparisons name what they compare with
  (``speedup_vs_<peer>``, ``max_abs_diff_vs_<reference>``, ``rel_l2_vs_<reference>``), or are plain
  ``speedup`` / ``rel_l2`` in a row of one implementation against its case's baseline (end to end,
  tuning, profile); a row holding several passes or implementations prefixes their fields
  (``fwd_ms``, ``fwd_matmul_fraction``, ``<peer>_ms``); ``error``: why the row's implementation did not run.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (none visible); nothing was measured")


def is_cuda_error(exc: BaseException) -> bool:
    """Whether ``exc`` leaves this process's CUDA context unusable (illegal address, launch failure...):
    nothing after it can run on the GPU, so a driver stops and reruns the rest in a fresh process."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(exc, accelerator_error) or "CUDA error" in str(exc) or "CUDA driver error" in str(exc)


def time_ms(fn, *, warmup_ms: int = 25, rep_ms: int = 200) -> dict:
    """Median and 20/80th percentile of ``fn()``'s GPU time in milliseconds."""
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"ms": median, "ms_p20": p20, "ms_p80": p80}


def host_us_per_call(fn, calls: int = 200) -> float:
    """Host time per call of ``fn`` in microseconds, issued back to back without waiting for the
    device: what the call adds to every step of a sampling loop when its kernels are short
    enough that launching them is the bottleneck (the 2-4 MB latents of a real sampler). When
    the kernels take longer than their launches, the launch queue fills and this approaches the
    device time instead."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(10):  # first calls build caches (launch plans, compiled graphs): not per-step cost
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    synchronize()
    return elapsed / calls * 1e6


def peak_memory_bytes(fn) -> int:
    """Peak CUDA memory allocated during one call of ``fn`` beyond what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src))["ms"]
    return 2 * nbytes / (t * 1e-3) / 1e9


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    t = time_ms(lambda: a @ b)["ms"]
    return 2 * n**3 / (t * 1e-3) / 1e12


def ceilings() -> dict:
    return {"copy_gbs": copy_bandwidth_gbs(), "bf16_matmul_tflops": matmul_tflops()}


def bandwidth(nbytes: float, ms: float, ceilings_: dict) -> dict:
    """``gbs``: ``nbytes`` moved in ``ms``, in GB/s; ``copy_fraction``: that over the run's copy bandwidth."""
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"gbs": gbs, "copy_fraction": gbs / ceilings_["copy_gbs"]}


def throughput(flops: float, ms: float, ceilings_: dict) -> dict:
    """``tflops``: ``flops`` done in ``ms``, in TFLOP/s; ``matmul_fraction``: that over the run's bf16 matmul rate."""
    tflops = flops / (ms * 1e-3) / 1e12
    return {"tflops": tflops, "matmul_fraction": tflops / ceilings_["bf16_matmul_tflops"]}


def commit() -> str:
    """``VIDGEN_COMMIT`` when set (a tree copied without ``.git``, as onto a GPU machine), else git's
    short hash, with ``+changes`` when tracked files differ from it; ``unknown`` without either."""
    if os.environ.get("VIDGEN_COMMIT"):
        return os.environ["VIDGEN_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.check_output(["git", "-C", here, "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                        text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def environment() -> dict:
    """The tags of a run: GPU name, clocks, memory, driver (nvidia-ml-py), library versions, the CUDA
    library vidgen loaded, the commit and the date."""
    import triton

    from vidgen.ops import _cuda_lib

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    unavailable = _cuda_lib.load_error()
    env["cuda_library"] = f"unavailable: {unavailable}" if unavailable else _cuda_lib.path()
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        env.update({
            "gpu": pynvml.nvmlDeviceGetName(handle),
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_gib": pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30,
        })
    except Exception as exc:  # no NVML (CPU machine): say so in the file
        env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        env["nvml_error"] = str(exc)
    return env


def result_stem(name: str, env: dict, results_dir: str | None = None) -> str:
    """``<results_dir>/<name>-<gpu>-<date>`` (default folder ``benchmarks/results/``, created)."""
    results_dir = results_dir or RESULTS_DIR
    os.makedirs(results_dir, exist_ok=True)
    gpu = (env.get("gpu") or "cpu").replace(" ", "_").replace("/", "_")
    return os.path.join(results_dir, f"{name}-{gpu}-{env['date'][:10]}")


def write_results(name: str, rows: list[dict], env: dict, ceilings_: dict | None = None,
                  results_dir: str | None = None) -> str:
    """Write ``rows`` to ``<results_dir>/<name>-<gpu>-<date>.{csv,json}`` (:func:`result_stem`);
    returns the stem.

    The JSON also records ``name`` as ``"benchmark"``, so ``tools/report.py`` tells the
    benchmarks apart without parsing file names (a GPU name may contain dashes).
    """
    stem = result_stem(name, env, results_dir)
    tagged = [{**row, **{f"env_{k}": v for k, v in env.items()}} for row in rows]
    with open(stem + ".json", "w") as f:
        json.dump({"benchmark": name, "environment": env, "ceilings": ceilings_, "rows": rows}, f, indent=1,
                  default=str)
    if tagged:
        fields = sorted({k for row in tagged for k in row})
        with open(stem + ".csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(tagged)
    return stem


def plot_speedups(stem: str, rows: list[dict], *, label_key: str, speedup_key: str, title: str) -> str:
    """Horizontal bar chart of ``speedup_key`` per ``label_key``; writes ``<stem>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r[label_key]) for r in rows]
    values = [float(r[speedup_key]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh(labels, values)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel(speedup_key)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)
    return stem + ".png"
