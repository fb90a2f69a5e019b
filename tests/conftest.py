"""Test setup: kernels run through Triton's interpreter on CPU tensors, outputs are poisoned.

* ``TRITON_INTERPRET=1`` is set before vidgen is imported, so CPU tensors take the Triton
  path (``auto`` backend). On a GPU machine, ``VIDGEN_TEST_DEVICE=cuda`` runs the same tests
  with compiled kernels on CUDA tensors instead.
* Every test runs with ``torch.use_deterministic_algorithms(True)``, whose
  ``fill_uninitialized_memory`` fills each ``torch.empty`` with NaN (ints: their max value):
  an output element a kernel forgets to write fails the comparison.
* One CUDA fault stays one failure (``cuda_faults.py``): a test whose error loses the CUDA
  context is named, and its pytest-xdist worker ends so that a fresh one runs the rest.
"""
import os

DEVICE = os.environ.get("VIDGEN_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # keep Triton's current default, silence its notice

import pytest  # noqa: E402
import torch  # noqa: E402
from cuda_faults import pytest_configure  # noqa: E402,F401  (registers the plugin)

# pytest-xdist runs one worker per core: more intra-op threads only contend for the same cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def builtin_model_cache(tmp_path_factory):
    """One cache of built-in default models per test process, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("vidgen-cache")
    previous = os.environ.get("VIDGEN_CACHE")
    os.environ["VIDGEN_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("VIDGEN_CACHE")
    else:
        os.environ["VIDGEN_CACHE"] = previous


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture(autouse=True)
def interpreter_bf16_dot(monkeypatch):
    """Work around Triton's interpreter (3.6-3.9) keeping bf16 as raw uint16 bits and multiplying
    those integers in ``tl.dot``: widen bf16 operands to fp32 (exact), as the tensor cores read them.
    The rest of the interpreter handles bf16 correctly; compiled (GPU) runs are untouched."""
    if DEVICE != "cpu":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):
        return original(self, widen(a), widen(b), d, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


@pytest.fixture(autouse=True)
def interpreter_fp8_cast(monkeypatch):
    """Work around Triton's interpreter (3.9) rounding fp32 -> e4m3 half-up on the mantissa without
    carrying into the exponent (7.93 -> 4.0, not 8.0): cast as the GPU's ``cvt.rn.satfinite`` does,
    to nearest even, through ``torch.float8_e4m3fn``. Compiled (GPU) runs are untouched."""
    if DEVICE != "cpu":
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar != tl.float8e4nv or src.dtype.scalar != tl.float32:
            return original(self, src, dst_type, rounding_mode)
        data = torch.from_numpy(src.data.copy()).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return interpreter.TensorHandle(data.view(torch.uint8).numpy(), tl.float8e4nv)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_fp_to_fp", create_fp_to_fp)


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)
