"""The drivers of a source checkout that are not benchmarks, run from its root as ``python -m tools.<name>``.

* ``tools.gpu_check``: ``make gpu-check``, the bounded run on a lent GPU machine (install, the suite on
  CUDA tensors, the sanitizer, the benchmarks, a validation report);
* ``tools.sanitize_kernels``: one call of every kernel, for ``compute-sanitizer`` to watch;
* ``tools.sweep_frame_attention``: the frame-attention tile sweep on a GPU, the only writer of
  ``kernels/frame_attention_tuned.json``;
* ``tools.report``: README's status and results sections from ``benchmarks/results/``.

Not installed with vidgen (setup.py packages ``vidgen`` only), like ``benchmarks/``.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
