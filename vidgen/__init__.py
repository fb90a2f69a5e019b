"""vidgen: fused kernels for video diffusion on diffusers UNets."""
__version__ = "0.1.0"

from . import ops  # noqa: E402  (registers the torch custom ops)

# The diffusers-facing layer (inflation, patching, sampling) is imported on first use: diffusers is heavy.
_LAZY = {
    "inflate": "integration.video_unet",
    "VideoUNet": "integration.video_unet",
    "patch": "integration.patch",
    "unpatch": "integration.patch",
    "is_patched": "integration.patch",
    "patch_report": "integration.patch",
    "PatchReport": "integration.patch",
    "PatchEntry": "integration.patch",
    "FallbackWarning": "ops._fallback",
    "VideoModel": "sampling",
    "sample_video": "sampling",
    "invert": "sampling",
}

__all__ = ["ops", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'vidgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public API (lazy names included, before their first use) and the public submodules.
    return sorted(set(__all__) | {"integration", "sampling", "train"})
