"""Shared benchmark machinery: timing, ceilings measured in the same run, tagged result files.

Timing uses ``triton.testing.do_bench`` (CUDA events, warm-up, the L2 cache flushed before
every repeat so a small input is not served from cache), and reports the median with the
20th/80th percentiles. Ceilings (device copy bandwidth, bf16 matmul rate) are measured in the
same process, so every row's fraction of the roofline refers to this GPU at this moment.
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


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "-C", here, "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return os.environ.get("VIDGEN_COMMIT", "unknown")


def environment() -> dict:
    """GPU name, clocks, memory, driver (nvidia-ml-py), library versions and the commit."""
    import triton

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
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


def write_results(name: str, rows: list[dict], env: dict, ceilings_: dict | None = None,
                  results_dir: str | None = None) -> str:
    """Write ``rows`` to ``<results_dir>/<name>-<gpu>-<date>.{csv,json}`` (default folder
    ``benchmarks/results/``); returns the stem.

    The JSON also records ``name`` as ``"benchmark"``, so ``benchmarks/report.py`` tells the
    benchmarks apart without parsing file names (a GPU name may contain dashes).
    """
    results_dir = results_dir or RESULTS_DIR
    os.makedirs(results_dir, exist_ok=True)
    gpu = (env.get("gpu") or "cpu").replace(" ", "_").replace("/", "_")
    stem = os.path.join(results_dir, f"{name}-{gpu}-{env['date'][:10]}")
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


def is_prediction(data) -> bool:
    """Whether a result file (its JSON) holds a model's predictions (``benchmarks/roofline.py``, tagged
    ``environment.prediction``), not measurements: readers of measurements skip it."""
    return isinstance(data, dict) and bool((data.get("environment") or {}).get("prediction"))


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
