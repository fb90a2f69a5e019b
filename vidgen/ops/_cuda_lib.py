"""The compiled CUDA library (``libvidgen_cuda``, built from ``csrc/`` by CMake): soft loading, the
ctypes mirror of its C ABI, and its launchers, which pack tensors into the ABI's argument structs.

This file is to the CUDA library what a ``kernels/<op>.py`` launcher is to a Triton kernel. The
library has a small C ABI and no link to libtorch, so one build serves every PyTorch version. It
is loaded lazily on first use; if it is missing or fails to load, vidgen warns once, ``vidgen
info`` reports why, and the ops run their Triton implementation instead.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import torch

from ._fallback import warn_once
from ..kernels import guidance as _guidance_kernels
from ..kernels import noise as _noise_kernels

_ENV_PATH = "VIDGEN_CUDA_LIBRARY"


# -- the C ABI (csrc/vidgen_cuda.h) ---------------------------------------------------------------
ABI_VERSION = 3
NUM_PARTIALS = 64  # VIDGEN_NUM_PARTIALS: rows of the rescale workspace per video


class GuidedStepArgs(ctypes.Structure):
    """``VidgenGuidedStepArgs``: field order and types exactly as in the header."""

    _fields_ = [
        ("out", ctypes.c_void_p),
        ("pred_original", ctypes.c_void_p),
        ("sample", ctypes.c_void_p),
        ("eps_cond", ctypes.c_void_p),
        ("eps_uncond", ctypes.c_void_p),
        ("prior_cond", ctypes.c_void_p),
        ("noise", ctypes.c_void_p),
        ("partials", ctypes.c_void_p),
        ("level_t_values", ctypes.c_void_p),
        ("level_p_values", ctypes.c_void_p),
        ("seeds", ctypes.c_void_p),
        ("guidance_scales", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("pre", ctypes.c_int64),
        ("frames", ctypes.c_int64),
        ("post", ctypes.c_int64),
        ("scale_post", ctypes.c_int64),
        ("seed", ctypes.c_uint64),
        ("level_t", ctypes.c_float),
        ("level_p", ctypes.c_float),
        ("level_t_stride", ctypes.c_int32),
        ("level_p_stride", ctypes.c_int32),
        ("guidance_scale", ctypes.c_float),
        ("prior_strength", ctypes.c_float),
        ("guidance_rescale", ctypes.c_float),
        ("eta", ctypes.c_float),
        ("clip_range", ctypes.c_float),
        ("coef_keep", ctypes.c_float),
        ("coef_new", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("rule", ctypes.c_int32),
        ("prediction", ctypes.c_int32),
        ("use_clipped", ctypes.c_int32),
        ("inverse", ctypes.c_int32),
        ("noise_mode", ctypes.c_int32),
        ("noise_kind", ctypes.c_int32),
        ("scale_frames", ctypes.c_int32),
        ("device", ctypes.c_int32),
    ]


def declare_signatures(lib: ctypes.CDLL) -> None:
    lib.vidgen_abi_version.restype = ctypes.c_int
    lib.vidgen_abi_version.argtypes = []
    found = lib.vidgen_abi_version()
    if found != ABI_VERSION:
        raise OSError(f"ABI version {found}, this vidgen expects {ABI_VERSION}: rebuild with pip install -e .")
    lib.vidgen_last_error.restype = ctypes.c_char_p
    lib.vidgen_last_error.argtypes = []
    lib.vidgen_device_count.restype = ctypes.c_int
    lib.vidgen_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.vidgen_guided_step.restype = ctypes.c_int
    lib.vidgen_guided_step.argtypes = [ctypes.POINTER(GuidedStepArgs), ctypes.c_void_p]
    lib.vidgen_guided_step_args_size.restype = ctypes.c_int64
    lib.vidgen_guided_step_args_size.argtypes = []
    if lib.vidgen_guided_step_args_size() != ctypes.sizeof(GuidedStepArgs):
        raise OSError(f"VidgenGuidedStepArgs is {lib.vidgen_guided_step_args_size()} bytes in the library, "
                      f"{ctypes.sizeof(GuidedStepArgs)} in vidgen/ops/_cuda_lib.py: the two copies disagree")
    lib.vidgen_philox_randn4x_host.restype = ctypes.c_int
    lib.vidgen_philox_randn4x_host.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int64,
                                               ctypes.c_void_p, ctypes.c_void_p]


# -- loading -----------------------------------------------------------------------------------


def candidate_paths() -> list[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package: vidgen/_lib/
    explicit = os.environ.get(_ENV_PATH)
    if explicit:
        return [explicit]
    return sorted(glob.glob(os.path.join(here, "_lib", "libvidgen_cuda*.so")))


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    paths = candidate_paths()
    if not paths:
        return None, ("not built: no libvidgen_cuda*.so in vidgen/_lib (built by setup.py when nvcc "
                      "is present; VIDGEN_SKIP_CUDA_BUILD=1 skips it)")
    try:
        lib = ctypes.CDLL(paths[0])
        declare_signatures(lib)
    except (OSError, AttributeError) as exc:
        return None, f"failed to load {paths[0]}: {exc}"
    return lib, None


def library() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError with the reason when it is unavailable."""
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"vidgen CUDA library unavailable: {reason}")
    return lib


def load_error() -> str | None:
    """None when the library is loaded, else why it is not (warns once)."""
    lib, reason = _load()
    if lib is None:
        warn_once("each CUDA-library op", f"the library is not loaded ({reason})", "on Triton")
    return reason


def path() -> str | None:
    lib, _ = _load()
    return getattr(lib, "_name", None)


def check(status: int, what: str) -> None:
    """Turn a non-zero status from the C ABI into a Python error with the library's message."""
    if status != 0:
        message = library().vidgen_last_error().decode(errors="replace")
        raise RuntimeError(f"vidgen CUDA library: {what} failed: {message}")


# -- launchers ---------------------------------------------------------------------------------
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # enum VidgenDtype


def guided_step_args(out, pred_original, sample, eps_cond, eps_uncond, prior_cond, partials,
                     guidance: _guidance_kernels.Guidance,
                     step: _guidance_kernels.DDIMStep | _guidance_kernels.EulerStep,
                     noise: torch.Tensor | _guidance_kernels.NoiseDraw | None) -> GuidedStepArgs:
    """``VidgenGuidedStepArgs`` of one step: the tensors' raw pointers and the three setting groups
    as the header's fields (``device`` is left for the launch). Touches no device."""
    mode = _guidance_kernels.noise_mode(step, noise)
    generated = mode == _guidance_kernels.NOISE_GENERATED
    batch = sample.shape[0]
    if generated:
        _, pre, frames, post = _noise_kernels.video_layout(tuple(sample.shape), 2)
    else:
        pre, frames, post = 1, 1, sample.numel() // batch
    draw = noise if generated else _guidance_kernels.NoiseDraw("iid")  # unread unless generated
    keep, new = _noise_kernels.mixing_coefficients(draw.kind, draw.alpha)
    rule, level_t, level_p, eta, clip_range, use_clipped, inverse = _guidance_kernels.step_arguments(step)
    level_t, level_t_values, level_t_stride = _guidance_kernels.level_arguments(level_t)
    level_p, level_p_values, level_p_stride = _guidance_kernels.level_arguments(level_p)
    scale, scales, scale_post, scale_frames = _guidance_kernels.scale_arguments(guidance, tuple(sample.shape))
    ptr = (lambda t: None if t is None else t.data_ptr())  # noqa: E731
    return GuidedStepArgs(
        out=ptr(out), pred_original=ptr(pred_original), sample=ptr(sample), eps_cond=ptr(eps_cond),
        eps_uncond=ptr(eps_uncond), prior_cond=ptr(prior_cond),
        noise=ptr(noise) if mode == _guidance_kernels.NOISE_GIVEN else None, partials=ptr(partials),
        level_t_values=ptr(level_t_values), level_p_values=ptr(level_p_values), seeds=ptr(draw.seeds),
        guidance_scales=ptr(scales), batch=batch, pre=pre, frames=frames, post=post, scale_post=scale_post,
        seed=draw.seed, level_t=level_t, level_p=level_p, level_t_stride=level_t_stride,
        level_p_stride=level_p_stride, guidance_scale=scale, prior_strength=guidance.prior_strength,
        guidance_rescale=guidance.rescale, eta=eta, clip_range=float("inf") if clip_range is None else clip_range,
        coef_keep=keep, coef_new=new, dtype=_DTYPE_CODES[sample.dtype], rule=rule,
        prediction=_guidance_kernels.PREDICTION_TYPES.index(step.prediction_type),
        use_clipped=int(use_clipped), inverse=int(inverse), noise_mode=mode,
        noise_kind=_noise_kernels.KINDS.index(draw.kind), scale_frames=scale_frames,
    )


def guided_step(sample, eps_cond, eps_uncond, prior_cond, guidance: _guidance_kernels.Guidance,
                step: _guidance_kernels.DDIMStep | _guidance_kernels.EulerStep, noise: torch.Tensor | _guidance_kernels.NoiseDraw | None, *,
                return_pred_original: bool):
    """The CUDA library's step on the current stream: raw pointers through the C ABI, no host sync."""
    lib = library()
    out = torch.empty_like(sample)
    x0 = torch.empty_like(sample) if return_pred_original else None
    partials = None
    if guidance.rescale > 0 and eps_uncond is not None:
        partials = torch.empty((sample.shape[0], NUM_PARTIALS, 4), dtype=torch.float32, device=sample.device)
    args = guided_step_args(out, x0, sample, eps_cond, eps_uncond, prior_cond, partials, guidance, step, noise)
    args.device = sample.device.index if sample.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(sample.device).cuda_stream
    check(lib.vidgen_guided_step(ctypes.byref(args), ctypes.c_void_p(stream)), "guided_step")
    return out, x0
