"""vidgen: fused kernels for video diffusion on diffusers UNets."""
__version__ = "0.1.0"

from . import ops  # noqa: E402  (registers the torch custom ops)

__all__ = ["ops", "__version__"]
