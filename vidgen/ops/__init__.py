"""vidgen's ops: each dispatches to the CUDA library, Triton or its PyTorch reference (see ``vidgen.ops._backend``)."""
from ..kernels._cache import cache_dir  # noqa: F401  ($VIDGEN_CACHE, for the default models; not an op)
from ._backend import BackendUnavailable, use_backend
from .frame_attention import (first_frame_attention, frame_attention, full_frame_attention,
                              sparse_causal_attention)
from .frame_group_norm import frame_group_norm, frame_group_norm_apply, frame_group_norm_statistics
from .geglu import geglu
from .guidance import guided_step
from .linear_residual import linear_residual
from .noise import add_noise, correlated_noise
from .temporal_attention import temporal_attention

__all__ = ["BackendUnavailable", "add_noise", "correlated_noise", "first_frame_attention", "frame_attention",
           "frame_group_norm", "frame_group_norm_apply", "frame_group_norm_statistics", "full_frame_attention", "geglu",
           "linear_residual", "sparse_causal_attention", "guided_step", "temporal_attention", "use_backend"]
