"""vidgen: fused kernels for video diffusion on diffusers UNets."""
__version__ = "0.1.0"

from . import ops  # noqa: E402  (registers the torch custom ops)

__all__ = ["ops", "__version__"]

# The diffusers-facing layer (inflation, patching) is imported on first use: diffusers is heavy.
_LAZY = {"inflate": "models", "patch": "patching", "unpatch": "patching"}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vidgen' has no attribute {name!r}")
