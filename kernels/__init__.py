"""Triton kernels of vidgen (installed as ``vidgen.kernels``).

One module per op, Liger-Kernel style: the pure-PyTorch reference (the spec, the CPU
fallback and the test oracle), the private ``@triton.jit`` kernels, then the launchers.
Each module also lists the launch configurations it can use (``aot_specs()``), so the
ahead-of-time compile test checks exactly what the launchers can launch.
"""

import importlib.machinery
import importlib.util
import os
import sys

if __name__ == "kernels":
    # This folder is imported as ``vidgen.kernels``. Run from the checkout's root (``python -m ...``
    # puts it on sys.path), Python also finds it as a top-level ``kernels``: the name of Hugging
    # Face's kernels package, which transformers depends on and imports when it is installed. Hand
    # that import to the installed package, so transformers and diffusers get theirs.
    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _search = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _installed = importlib.machinery.PathFinder.find_spec("kernels", _search)
    if _installed is not None:
        _module = importlib.util.module_from_spec(_installed)
        sys.modules["kernels"] = _module  # what `import kernels` returns once this file has run
        _installed.loader.exec_module(_module)
