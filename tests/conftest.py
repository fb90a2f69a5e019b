"""Test setup: kernels run through Triton's interpreter on CPU tensors, outputs are poisoned.

* ``TRITON_INTERPRET=1`` is set before vidgen is imported, so CPU tensors take the Triton
  path (``auto`` backend). On a GPU machine, ``VIDGEN_TEST_DEVICE=cuda`` runs the same tests
  with compiled kernels on CUDA tensors instead.
* Every test runs with ``torch.use_deterministic_algorithms(True)``, whose
  ``fill_uninitialized_memory`` fills each ``torch.empty`` with NaN (ints: their max value):
  an output element a kernel forgets to write fails the comparison.
"""
import os

DEVICE = os.environ.get("VIDGEN_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # keep Triton's current default, silence its notice

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)
