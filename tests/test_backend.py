"""Backend selection rules, `vidgen info` and the `vidgen` command."""
import subprocess
import sys

import pytest
import torch

from vidgen.ops import _backend
from vidgen.ops import BackendUnavailable, use_backend

CUDA_OP = _backend.OpInfo("test_op_cuda", ("cuda", "triton", "torch"))
TRITON_OP = _backend.OpInfo("test_op_triton", ("triton", "torch"))


def test_the_interpreter_is_on_exactly_when_tests_run_on_cpu(device):
    # conftest sets TRITON_INTERPRET=1 for a CPU run; a GPU run (VIDGEN_TEST_DEVICE=cuda) must
    # test the compiled kernels, so the interpreter must be off there.
    assert _backend.interpreter_enabled() == (device.type == "cpu")


def test_auto_runs_cpu_tensors_through_the_interpreter_when_enabled(monkeypatch):
    monkeypatch.setattr(_backend, "interpreter_enabled", lambda: True)  # whatever this run's TRITON_INTERPRET
    assert _backend.select(TRITON_OP, torch.device("cpu")) == "triton"
    assert _backend.select(CUDA_OP, torch.device("cpu")) == "triton"


def test_auto_prefers_the_cuda_library_for_cuda_tensors_when_it_loaded(monkeypatch):
    from vidgen.ops import _cuda_lib

    monkeypatch.setattr(_cuda_lib, "load_error", lambda: None)
    assert _backend.select(CUDA_OP, torch.device("cuda")) == "cuda"
    monkeypatch.setattr(_cuda_lib, "load_error", lambda: "not built")
    assert _backend.select(CUDA_OP, torch.device("cuda")) == "triton"
    assert _backend.select(TRITON_OP, torch.device("cuda")) == "triton"


def test_forced_backend_runs_or_says_why(monkeypatch):
    with use_backend("torch"):
        assert _backend.select(CUDA_OP, torch.device("cpu")) == "torch"
    with use_backend("cuda"), pytest.raises(BackendUnavailable, match="CUDA tensors only"):
        _backend.select(CUDA_OP, torch.device("cpu"))
    monkeypatch.setenv("VIDGEN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="has no cuda implementation"):
        _backend.select(TRITON_OP, torch.device("cuda"))
    monkeypatch.setenv("VIDGEN_BACKEND", "fast")
    with pytest.raises(BackendUnavailable, match="expected one of"):
        _backend.select(TRITON_OP, torch.device("cpu"))


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(_backend, "interpreter_enabled", lambda: False)
    assert _backend.select(TRITON_OP, torch.device("cpu")) == "torch"
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        _backend.select(TRITON_OP, torch.device("cpu"))


def test_every_declared_op_ends_with_the_reference():
    assert _backend.REGISTRY, "no op declared"
    for op in _backend.REGISTRY.values():
        assert op.backends[-1] == "torch", op


def test_info_lists_versions_library_state_and_every_op():
    from vidgen import info

    text = info.report()
    for needle in ("torch", "triton", "CUDA library:", "GPU (nvidia-ml-py):"):
        assert needle in text
    for name in _backend.REGISTRY:
        assert name in text


@pytest.mark.parametrize("argv", [["-m", "vidgen.info"], ["-m", "vidgen.cli", "info"]])
def test_info_entry_points_run(argv):
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "correlated_noise" in proc.stdout


def test_cli_rejects_an_unknown_command():
    proc = subprocess.run([sys.executable, "-m", "vidgen.cli", "frobnicate"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "unknown command" in proc.stderr


@use_backend("torch")  # the table's plumbing: the interpreter at the demo's shapes takes minutes
def test_demo_prints_a_row_per_op():
    from vidgen import demo

    rows = demo.run_ops(torch.device("cpu"), repeats=1)
    assert {r["op"] for r in rows} == set(_backend.REGISTRY)
    assert all(r["ms"] > 0 for r in rows)
    assert "median ms" in demo.format_table(rows)


def test_ops_skip_their_registration_only_in_plain_eager_inference():
    # The public ops call their implementation directly (no torch.library round trip) unless
    # something needs the registered op: autograd, torch.compile, a dispatch mode, the profiler.
    from torch.utils._python_dispatch import TorchDispatchMode

    plain, tracked = torch.ones(3), torch.ones(3, requires_grad=True)
    assert _backend.direct_call_ok(plain, plain)
    assert not _backend.direct_call_ok(plain, tracked)
    with torch.no_grad():
        assert _backend.direct_call_ok(plain, tracked)
    assert not _backend.direct_call_ok(torch.nn.Parameter(torch.ones(3), requires_grad=False))  # a subclass

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Recorder():
        assert not _backend.direct_call_ok(plain)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert not _backend.direct_call_ok(plain)
    assert torch.compile(lambda x: x + _backend.direct_call_ok(x), backend="eager")(plain).tolist() == [1.0] * 3
