"""ctypes signatures of the C ABI exported by ``csrc/`` (see ``csrc/vidgen_cuda.h``)."""
from __future__ import annotations

import ctypes

ABI_VERSION = 2
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
        ("alpha_t_values", ctypes.c_void_p),
        ("alpha_p_values", ctypes.c_void_p),
        ("seeds", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("pre", ctypes.c_int64),
        ("frames", ctypes.c_int64),
        ("post", ctypes.c_int64),
        ("seed", ctypes.c_uint64),
        ("alpha_t", ctypes.c_float),
        ("alpha_p", ctypes.c_float),
        ("alpha_t_stride", ctypes.c_int32),
        ("alpha_p_stride", ctypes.c_int32),
        ("guidance_scale", ctypes.c_float),
        ("prior_strength", ctypes.c_float),
        ("guidance_rescale", ctypes.c_float),
        ("eta", ctypes.c_float),
        ("clip_range", ctypes.c_float),
        ("coef_keep", ctypes.c_float),
        ("coef_new", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("prediction", ctypes.c_int32),
        ("use_clipped", ctypes.c_int32),
        ("inverse", ctypes.c_int32),
        ("noise_mode", ctypes.c_int32),
        ("noise_kind", ctypes.c_int32),
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
                      f"{ctypes.sizeof(GuidedStepArgs)} in vidgen/_cuda_abi.py: the two copies disagree")
    lib.vidgen_philox_randn4x_host.restype = ctypes.c_int
    lib.vidgen_philox_randn4x_host.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int64,
                                               ctypes.c_void_p, ctypes.c_void_p]
