"""``make gpu-check``: one bounded run on a lent GPU machine that installs, validates and benchmarks.

    python3 -m tools.gpu_check [--deadline S] [--phases NAME,...] [--skip NAME,...] [--dry-run]

Made for a lent GPU machine (docs/DEVELOPING.md, "On a GPU machine": Python with torch, triton,
nvcc, compute-sanitizer, pytest-xdist and pytest-timeout; no network; diffusers and av carried
as wheels in ``.whl/``) and for the device tool's limits: every phase runs under a cap cut to
the time left, so the whole run ends inside ``DEADLINE`` seconds (default 540, 9 minutes), and
at most 8 files come back from ``$OUT``.

Phases, in order (``--phases``/``--skip`` take these names or the groups setup, sanitize, bench):

* setup: ``nvidia-smi``; the carried wheels into a private ``--target`` folder; vidgen as an
  editable install without network (a prebuilt ``vidgen/_lib/libvidgen_cuda*.so``, carried
  along, is kept: ``VIDGEN_SKIP_CUDA_BUILD=1``); ``vidgen info``; the run's tags (GPU, driver,
  versions, commit: ``VIDGEN_COMMIT`` when the tree has no git, as on the GPU machine).
* tests: the suite on CUDA tensors (``VIDGEN_TEST_DEVICE=cuda``, ``-n 14``, a per-test
  timeout, ``tests/test_aot_compile.py`` excluded), JUnit XML kept.
* sanitize: ``tools/sanitize_kernels.py`` once plainly (compiles every kernel, checks the
  outputs are written), then under ``compute-sanitizer --tool memcheck`` and ``--tool
  racecheck``. It shares the GPU with the tests (run at the same time unless ``--sequential``):
  neither measures time, and it saves the lease the sanitizer's minutes. A CUDA error ends the
  sanitized process; the entries not yet begun run again in a fresh one.
* bench: the benchmarks, most telling first, each with its cap (the torch.compile and
  FlexAttention peers compile for 30-90 s per shape, so the frame-attention benchmark runs the
  gather+SDPA peer only): frame attention, temporal attention, ``tools/sweep_frame_attention.py``
  and ``benchmarks/profile_step.py`` (only if those files exist), noise, guidance, end to end
  (its SD1.5-size random model is built on the CPU during the tests).

Outputs: logs and the JUnit XML in the work folder (``$OUT`` or ``./gpu-out``; a folder of
its own under /tmp when ``$OUT`` is set, which then receives ``run.log``, ``summary.txt``,
``tests.xml``, the validation report, ``logs.tgz`` and ``results.tgz``: the new files of
``benchmarks/results/`` and the sweep's ``kernels/frame_attention_tuned.json`` if it rewrote it,
to unpack in the repository root). The validation report
(``benchmarks/results/validation-<GPU>-<date>.json``: device, driver, versions, commit, date,
each phase, pass/fail counts per test file, the sanitizer's verdict per entry and a status per
kernel: "correct on GPU", "failed" or "not run") feeds the README's status section
(``tools/report.py``). The last thing printed is a one-screen summary.

``--dry-run`` (or ``GPU_CHECK_DRY_RUN=1``) runs the same plumbing on a CPU machine: trivial
stand-ins for the GPU commands, the test phase on the CPU-sized checks of
``tests/test_real_shapes.py``, the kernel driver on tiny shapes through Triton's interpreter,
and the report into the work folder instead of ``benchmarks/results/``.

Modules: ``cli`` (the command line and the order of a run), ``deadline`` (commands under caps),
``phases`` (what each phase runs), ``evidence`` (reading what the phases left into verdicts),
``validation`` (the report, the summary and the files that come back).
"""
