"""Which implementation an op call runs on: the compiled CUDA library, Triton, or PyTorch.

Rules (the same for every op):

* CUDA tensors run the CUDA library when the op has one and it loaded, else compiled Triton.
* CPU tensors run the Triton kernels through Triton's interpreter when ``TRITON_INTERPRET=1``
  was set before vidgen was imported (how the kernel tests run), else the PyTorch reference.
* ``VIDGEN_BACKEND=cuda|triton|torch`` (or :func:`use_backend`) forces one. A forced backend
  that cannot run this call raises :class:`BackendUnavailable` saying why; it never falls
  back silently, so a benchmark or a test always knows what it measured.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass

import torch
from torch.utils import _python_dispatch

BACKENDS = ("cuda", "triton", "torch")
_ENV = "VIDGEN_BACKEND"
_override = threading.local()


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the requested call."""


@dataclass(frozen=True)
class OpInfo:
    """Declared capabilities of one op, in priority order (the last is always ``torch``)."""

    name: str
    backends: tuple[str, ...]
    differentiable: bool = False


REGISTRY: dict[str, OpInfo] = {}


def declare(name: str, backends: tuple[str, ...], differentiable: bool = False) -> OpInfo:
    assert backends[-1] == "torch", "every op ends its priority list with the PyTorch reference"
    info = OpInfo(name, backends, differentiable)
    REGISTRY[name] = info
    return info


@functools.lru_cache(maxsize=None)
def interpreter_enabled() -> bool:
    """True when Triton kernels were decorated for the interpreter (env read at first use)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton ships with every supported torch
        return f"triton is not importable: {exc}"
    return None


def requested() -> str:
    """The forced backend name, or ``"auto"``."""
    name = getattr(_override, "name", None) or os.environ.get(_ENV, "auto")
    name = name.strip().lower()
    if name not in BACKENDS + ("auto",):
        raise BackendUnavailable(f"{_ENV}={name!r}: expected one of auto, {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend for the calls made inside the block (this thread only)."""
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        requested()  # validate early
        yield
    finally:
        _override.name = previous


def unsupported_reason(backend: str, op: OpInfo, device: torch.device) -> str | None:
    """None when ``backend`` can run ``op`` on ``device``, else the reason it cannot."""
    if backend not in op.backends:
        return f"op {op.name!r} has no {backend} implementation (it has: {', '.join(op.backends)})"
    if backend == "torch":
        return None
    if backend == "triton":
        reason = triton_import_error()
        if reason:
            return reason
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if interpreter_enabled():
                return None
            return "Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before importing vidgen"
        return f"Triton backend does not run on {device.type} tensors"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the CUDA library runs CUDA tensors only, got a {device.type} tensor"
        from . import _cuda_lib

        return _cuda_lib.load_error()
    raise AssertionError(backend)


def direct_call_ok(*tensors: torch.Tensor) -> bool:
    """Whether an op may call its implementation directly rather than through its ``torch.library``
    custom op: the round trip (dispatcher, autograd wrapper, dynamo's guard) costs more host time per
    call than the launch it wraps, and a UNet makes hundreds of calls per step.

    The registration is what torch.compile traces, what autograd differentiates, what dispatch
    modes (FakeTensor, the tests' host-read recorder) and the profiler see by name, so it stays the
    path whenever any of those is involved: compiling, an active Python dispatch mode, the
    profiler on, autograd recording on any input, or an input that is a tensor subclass.
    """
    if torch.compiler.is_compiling() or _python_dispatch._get_current_dispatch_mode() is not None \
            or torch.autograd.profiler._is_profiler_enabled:
        return False
    grad = torch.is_grad_enabled()
    return all(type(t) is torch.Tensor and not (grad and t.requires_grad) for t in tensors)


def select(op: OpInfo, device: torch.device) -> str:
    """The backend this call runs on (see the module docstring)."""
    forced = requested()
    if forced != "auto":
        reason = unsupported_reason(forced, op, device)
        if reason:
            raise BackendUnavailable(f"{_ENV}={forced} cannot run {op.name} here: {reason}")
        return forced
    for backend in op.backends:
        if unsupported_reason(backend, op, device) is None:
            return backend
    raise AssertionError("unreachable: torch is always available")


def runs_triton(op: OpInfo, x: torch.Tensor) -> bool:
    """Whether a call of ``op`` on ``x`` runs its Triton kernels: Triton is the backend :func:`select`
    picks and ``x`` is not float64 (the kernels take fp16, bf16 or fp32; float64 runs the PyTorch
    reference, and forcing Triton on it is an error)."""
    backend = select(op, x.device)
    if backend == "triton" and x.dtype == torch.float64:
        if requested() == "triton":
            raise BackendUnavailable(f"{_ENV}=triton cannot run {op.name} on float64 inputs: the kernels take "
                                     "fp16, bf16 or fp32 (float64 runs the PyTorch reference)")
        return False
    return backend == "triton"
