"""ctypes signatures of the C ABI exported by ``csrc/`` (see ``csrc/vidgen_cuda.h``)."""
from __future__ import annotations

import ctypes


ABI_VERSION = 1


def declare_signatures(lib: ctypes.CDLL) -> None:
    lib.vidgen_abi_version.restype = ctypes.c_int
    lib.vidgen_abi_version.argtypes = []
    lib.vidgen_last_error.restype = ctypes.c_char_p
    lib.vidgen_last_error.argtypes = []
    lib.vidgen_device_count.restype = ctypes.c_int
    lib.vidgen_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
    found = lib.vidgen_abi_version()
    if found != ABI_VERSION:
        raise OSError(f"ABI version {found}, this vidgen expects {ABI_VERSION}: rebuild with pip install -e .")
