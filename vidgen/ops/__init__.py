"""vidgen's ops: each dispatches to the CUDA library, Triton or its PyTorch reference (see ``vidgen._backend``)."""
from .._backend import BackendUnavailable, use_backend
from .noise import add_noise, correlated_noise

__all__ = ["BackendUnavailable", "add_noise", "correlated_noise", "use_backend"]
