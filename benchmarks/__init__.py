"""What measures vidgen, run from the checkout as ``python -m benchmarks.<name>``: ``bench_*`` against the
peers a user would otherwise pick, ``profile_step`` (where a denoising step's time goes, by ``step_roles``),
and ``harness`` (timing, ceilings measured in the same run, the one result writer and its schema).

Not installed with vidgen (setup.py packages ``vidgen`` only); the drivers that measure nothing themselves
are in ``tools/``.
"""
