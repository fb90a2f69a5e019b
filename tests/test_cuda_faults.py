"""One CUDA fault, one failure (tests/cuda_faults.py): which errors lose the CUDA context, and
a pytest-xdist run in which a test faults: it fails once, is named, and the next test runs in a
fresh worker."""
import os
import re
import subprocess
import sys

import pytest
import torch

import cuda_faults
from cuda_faults import is_context_fatal


def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """``exc`` as Python leaves it after ``raise exc from cause`` (or a plain raise)."""
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("exc", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
    RuntimeError("vidgen CUDA library: guided_step failed: kernel: device-side assert triggered"),
    raised(ValueError("the reference disagrees"), RuntimeError("CUDA error: misaligned address")),
], ids=["torch", "torch-launch-failure", "triton", "cuda-library", "chained"])
def test_errors_that_lose_the_context(exc):
    assert is_context_fatal(exc)


@pytest.mark.parametrize("exc", [
    None,
    RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    AssertionError("out: max error 0.599 (an illegal memory access would look different)"),
    ValueError("CUDA error in a message of another kind"),
])
def test_errors_that_leave_the_context_usable(exc):
    assert not is_context_fatal(exc)


def test_conftest_registers_the_plugin(pytestconfig):
    assert isinstance(pytestconfig.pluginmanager.get_plugin(cuda_faults.PLUGIN_NAME), cuda_faults.CudaFaults)


FAULTING_SUITE = """
import os

def test_faults():
    with open(os.environ["FAULTED_PID"], "w") as f:
        f.write(str(os.getpid()))
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

def test_after_the_fault():
    assert os.getpid() != int(open(os.environ["FAULTED_PID"]).read()), "ran in the faulted process"
"""


def counts(stdout: str) -> str:
    """The outcome counts of pytest's last summary line, e.g. "1 failed, 1 passed"."""
    return re.findall(r"^=+ (.*) in [\d.]+s", stdout, re.MULTILINE)[-1]


def run_faulting_suite(tmp_path, *options: str) -> tuple[subprocess.CompletedProcess, str]:
    """pytest on FAULTING_SUITE with only this plugin loaded (no torch: fast); (process, fault log)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_suite.py").write_text(FAULTING_SUITE)
    log = tmp_path / "faults.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's xdist worker
    env.update(PYTHONPATH=os.pathsep.join([os.path.dirname(cuda_faults.__file__), env.get("PYTHONPATH", "")]),
               VIDGEN_FAULT_LOG=str(log), FAULTED_PID=str(tmp_path / "faulted.pid"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "cuda_faults", "-p", "no:cacheprovider", *options,
                           "test_suite.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, log.read_text() if log.exists() else ""


def test_under_xdist_a_fault_fails_once_and_a_fresh_worker_runs_the_rest(tmp_path):
    proc, log = run_faulting_suite(tmp_path, "-n", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert counts(proc.stdout) == "1 failed, 1 passed", output
    assert "crashed while running" not in output, output  # the worker's end is not counted as a second failure
    assert "CUDA context lost in test_suite.py::test_faults" in proc.stderr, output
    assert "test_suite.py::test_faults: lost its process's CUDA context" in proc.stdout, output  # the summary
    assert "test_suite.py::test_faults" in log and "illegal memory access" in log


def test_without_xdist_a_fault_stops_the_session(tmp_path):
    proc, log = run_faulting_suite(tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert counts(proc.stdout) == "1 failed", proc.stdout
    assert "CUDA context lost in test_suite.py::test_faults" in proc.stdout
    assert "test_suite.py::test_faults" in log
