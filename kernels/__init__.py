"""Triton kernels of vidgen (installed as ``vidgen.kernels``).

One module per op, Liger-Kernel style: the pure-PyTorch reference (the spec, the CPU
fallback and the test oracle), the private ``@triton.jit`` kernels, then the launchers.
Each module also lists the launch configurations it can use (``aot_specs()``), so the
ahead-of-time compile test checks exactly what the launchers can launch.
"""
