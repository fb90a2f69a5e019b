"""Build: the Python package, plus the CUDA library from ``csrc/`` through CMake when nvcc is present.

``vidgen`` installs from ``vidgen/`` and ``vidgen.kernels`` from ``kernels/``. The CUDA library
(``vidgen/_lib/libvidgen_cuda*.so``, a small C ABI loaded with ctypes) is built for sm_80 and
sm_90a plus PTX; ``VIDGEN_CUDA_ARCHS`` overrides the targets (CMake syntax, e.g. ``"90a-real"``)
and ``VIDGEN_SKIP_CUDA_BUILD=1`` skips it. Without nvcc a working pure-Python package installs.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

DEFAULT_CUDA_ARCHS = "80-real;90a-real;90-virtual"
ROOT = os.path.dirname(os.path.abspath(__file__))


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        archs = os.environ.get("VIDGEN_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
        subprocess.check_call([
            "cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_COMPILER={find_nvcc()}", f"-DVIDGEN_CUDA_ARCHS={archs}",
        ])
        subprocess.check_call(["cmake", "--build", build_dir, "--parallel", str(os.cpu_count() or 2)])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(build_dir, "libvidgen_cuda.so"), target)

    def copy_extensions_to_source(self):  # editable installs: the library lands in vidgen/_lib/
        os.makedirs(os.path.join(ROOT, "vidgen", "_lib"), exist_ok=True)
        super().copy_extensions_to_source()


def cuda_extensions():
    if os.environ.get("VIDGEN_SKIP_CUDA_BUILD") == "1":
        print("vidgen: VIDGEN_SKIP_CUDA_BUILD=1, building the pure-Python package", file=sys.stderr)
        return []
    if find_nvcc() is None or shutil.which("cmake") is None:
        print("vidgen: nvcc or cmake not found, building the pure-Python package", file=sys.stderr)
        return []
    return [CMakeExtension("vidgen._lib.libvidgen_cuda")]


setup(
    packages=["vidgen", *(f"vidgen.{p}" for p in find_packages("vidgen")), "vidgen.kernels"],
    package_dir={"vidgen": "vidgen", "vidgen.kernels": "kernels"},
    ext_modules=cuda_extensions(),
    cmdclass={"build_ext": CMakeBuild},
)
