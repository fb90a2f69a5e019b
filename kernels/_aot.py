"""Ahead-of-time compilation of every launchable kernel config for GPU targets, without a GPU.

Each kernel module exposes ``aot_specs() -> list[KernelSpec]`` built from the same config
tables its launcher picks from. :func:`compile_spec` compiles one for a compute capability
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and reports the
shared memory it needs against the target's limit, whether sm_90 code uses wgmma, and the
registers and stack (spills) ptxas gave it. A spec whose stack exceeds its ``max_stack`` fails:
tensor-core attention kernels may not spill at all (a spill is where a miscompile showed up:
docs/DEVELOPING.md, "Why the tile tables look as they do"), CUDA-core fp32 and the Philox noise
kernels carry a small named allowance.

Every spec is checked on two toolchains: the Triton that is installed (the newest, in CI) and the
oldest vidgen supports (:data:`OLDEST_TRITON`, the GPU image's, with its own ptxas), installed
beside the environment by ``make install`` (:func:`oldest_triton_path`). A toolchain is chosen by
the ``PYTHONPATH`` of the compiling process; ``--expect-triton`` makes the table refuse to run
on any other version.

What is compiled is the specialisation a launch on ordinary inputs gets (:func:`runtime_attrs`:
aligned pointers, sizes and strides divisible by 16 marked as such; a module declares
arguments that are 1 on such launches, like unit strides, as constants): that is the code that
runs, with the deepest cp.async pipelines and so the most shared memory. Other alignments of
the same config compile to code with less staging.

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces ``@triton.jit`` objects).
``python -m vidgen.kernels._aot`` compiles everything and prints a table; ``--json`` keeps the rows and
``--compare`` checks a later compile against them (:func:`ptx_digest`: a rename must not change code).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

# Max dynamic shared memory per block (opt-in), bytes: A100 (sm_80) and H100 (sm_90).
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}
# The oldest Triton vidgen supports (pyproject: triton>=3.6): the GPU image's, whose bundled ptxas
# (12.8) allocates registers differently from the newest one's. ``make install`` puts it in
# ``<venv>/triton-<version>`` (pip --target), where the ahead-of-time test compiles with it.
OLDEST_TRITON = "3.6.0"
# The attention launches cap registers at the hardware maximum (``.maxnreg 255``): without it ptxas
# gave some kernels that cannot fit their tiles only 32 registers and a stack of several KB. At or
# below 255 the cap changes nothing.
MAX_REGISTERS = 255
# ``tl.randn`` (Box-Muller) calls libdevice's sin/cos, whose Payne-Hanek argument reduction for huge
# arguments keeps a small local array: a stack frame that exists, not register spills, on a path
# Box-Muller angles (|x| < 2 pi) never take. Kernels that draw normals in-kernel are allowed it.
PHILOX_NORMALS_STACK = 96
PHILOX_NORMALS_NOTE = "libdevice sin/cos slow-path array inside tl.randn (never taken by Box-Muller angles)"
KERNEL_MODULES = (
    "vidgen.kernels.noise",
    "vidgen.kernels.guidance",
    "vidgen.kernels.frame_attention",
    "vidgen.kernels.frame_attention_fp8",
    "vidgen.kernels.temporal_attention",
    "vidgen.kernels.frame_group_norm",
    "vidgen.kernels.geglu",
    "vidgen.kernels.linear_residual",
)


@dataclass(frozen=True)
class KernelSpec:
    """One launchable configuration of a ``@triton.jit`` kernel."""

    module: str
    kernel: str  # attribute name of the jit function in ``module``
    signature: dict[str, str]  # argument name -> Triton type ("*fp16", "i32", "fp32", "constexpr")
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    maxnreg: int | None = None  # the launch's register cap (``.maxnreg``), if it sets one
    expect_wgmma: bool = False  # sm_90 code must use wgmma (tensor-core attention kernels)
    expect_sm90_ptx: tuple[str, ...] = ()  # regexes sm_90 PTX must match (e.g. e4m3 wgmma of an FP8 kernel)
    max_stack: int = 0          # stack bytes per thread allowed (spills, local arrays); see ``stack_note``
    archs: tuple[int, ...] | None = None  # compute capabilities whose launches pick it (None: all)
    stack_note: str = ""        # why this spec may keep a stack (printed beside it in the table)

    @property
    def label(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        types = ",".join(t for t in self.signature.values() if t.startswith("*"))
        cap = f" r{self.maxnreg}" if self.maxnreg else ""
        return (f"{self.module.rsplit('.', 1)[-1]}.{self.kernel}[{types}][{consts}] "
                f"w{self.num_warps} s{self.num_stages}{cap}")


def runtime_attrs(fn, signature: dict[str, str]) -> dict:
    """The divisibility attributes a launch with real inputs gives the compiler.

    At a launch Triton marks every pointer whose address is 16-byte aligned, and every integer
    argument divisible by 16 that the kernel does not exempt with ``do_not_specialize``, as
    ``tt.divisibility=16``. Those hints decide whether loads vectorise and whether the software
    pipeliner can stage them with ``cp.async`` (one buffer per stage in shared memory), so a
    compile without them is not the code that runs: it has fewer, narrower copies, less shared
    memory and more registers. This is the specialisation of freshly allocated tensors with
    sizes and strides that are multiples of 16, the common case, and the one with the deepest
    pipelines: the most shared memory any alignment of the same config asks for.
    """
    attrs = {}
    for name, kind in signature.items():
        index = fn.arg_names.index(name)
        param = fn.params[index]
        if kind.startswith("*") and not param.do_not_specialize_on_alignment:
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind in ("i32", "i64") and not param.do_not_specialize:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return attrs


def oldest_triton_path(prefix: str | None = None) -> str:
    """Where ``make install`` put :data:`OLDEST_TRITON` (a ``pip install --target`` folder to put first
    on ``PYTHONPATH``): ``<venv>/triton-<version>``."""
    return os.path.join(prefix or sys.prefix, f"triton-{OLDEST_TRITON}")


def register_usage(cubin: bytes, kernel: str) -> tuple[int | None, int | None]:
    """(registers per thread, stack bytes per thread) of ``kernel`` in ``cubin``, as ptxas allotted
    them, read with the ``cuobjdump`` that ships with Triton; (None, None) where it is missing.

    A kernel at the 255-register ceiling with a stack is spilling to local memory, traffic the
    roofline does not show; :func:`compile_spec` holds it against ``max_stack``.
    """
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(tool, os.X_OK):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(rf"Function {re.escape(kernel)}:\s*REG:(\d+) STACK:(\d+)", report)
    return (int(found.group(1)), int(found.group(2))) if found else (None, None)


def ptx_digest(ptx: str, kernel: str) -> str:
    """A hash of the code in ``ptx`` that a rename cannot change: the kernel's own name is replaced,
    and the debug information (``.file``/``.loc`` source positions, ``.debug_*`` sections) and
    comments are dropped, since moving a line in the source moves them. Two compiles of the same
    maths under other argument names, constexpr names or source lines have the same digest; any
    difference in an instruction, a register count or a shared-memory layout changes it."""
    import hashlib

    code = ptx.split("\t.section\t.debug", 1)[0]
    lines = [line for line in code.replace(kernel, "KERNEL").splitlines()
             if line.strip() and not line.lstrip().startswith(("//", ".loc", ".file"))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def compile_problems(spec: KernelSpec, row: dict) -> list[str]:
    """What is wrong with the compiled ``row`` of ``spec`` (empty: it passes)."""
    cc = row["cc"]
    problems = []
    if row["shared"] > SHARED_MEMORY_LIMIT[cc]:
        problems.append(f"needs {row['shared']} B shared memory, sm_{cc} has {SHARED_MEMORY_LIMIT[cc]}")
    if cc >= 90 and spec.expect_wgmma and not row["wgmma"]:
        problems.append("sm_90 code does not use wgmma")
    problems += [f"sm_90 PTX has no match for {pattern!r}" for pattern in row.get("ptx_missing") or ()]
    if row["stack"] is None:
        problems.append("no register report (cuobjdump missing from triton's backend)")
    elif row["stack"] > spec.max_stack:
        problems.append(f"{row['stack']} B stack per thread at {row['registers']} registers (spills); "
                        f"allowed {spec.max_stack}")
    return problems


def compile_spec(spec: KernelSpec, cc: int) -> dict:
    """Compile ``spec`` for ``sm_<cc>``; returns a result row (``ok`` False with ``error`` on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"label": spec.label, "cc": cc, "triton": triton.__version__, "ok": False, "shared": None,
           "wgmma": None, "registers": None, "stack": None, "max_stack": spec.max_stack,
           "stack_note": spec.stack_note, "ptx_digest": None, "error": None}
    try:
        fn = getattr(importlib.import_module(spec.module), spec.kernel)
        if not isinstance(fn, triton.runtime.JITFunction):
            raise RuntimeError("kernel is not a JITFunction (is TRITON_INTERPRET set?)")
        src = ASTSource(fn=fn, signature=spec.signature, constexprs=dict(spec.constexprs),
                        attrs=runtime_attrs(fn, spec.signature))
        options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        if spec.maxnreg:
            options["maxnreg"] = spec.maxnreg
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        row["shared"] = int(compiled.metadata.shared)
        row["wgmma"] = "wgmma" in compiled.asm["ptx"]
        row["ptx_digest"] = ptx_digest(compiled.asm["ptx"], spec.kernel)
        row["ptx_missing"] = [pattern for pattern in spec.expect_sm90_ptx
                              if cc >= 90 and not re.search(pattern, compiled.asm["ptx"])]
        row["registers"], row["stack"] = register_usage(compiled.asm["cubin"], spec.kernel)
        problems = compile_problems(spec, row)
        row["ok"] = not problems
        row["error"] = "; ".join(problems) or None
    except Exception as exc:  # a compile failure is a result to report, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return row


def all_specs(modules=KERNEL_MODULES) -> list[KernelSpec]:
    specs = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # op not written yet
                continue
            raise
        specs.extend(module.aot_specs())
    return specs


def _compile_job(job):
    return compile_spec(*job)


def spec_dtypes(spec: KernelSpec) -> set[str]:
    """The element types of a spec's tensor arguments ("fp16", "fp32", ...; index tables included)."""
    return {kind[1:] for kind in spec.signature.values() if kind.startswith("*")}


def compile_all(ccs=(80, 90), modules=KERNEL_MODULES, jobs: int = 2, dtypes=None) -> list[dict]:
    """Compile every spec of ``modules`` for each of ``ccs`` its archs include; with ``dtypes``, only
    the specs whose tensors include one of them (e.g. the fp16/bf16 variants)."""
    specs = [spec for spec in all_specs(modules) if dtypes is None or spec_dtypes(spec) & set(dtypes)]
    work = [(spec, cc) for spec in specs for cc in ccs if spec.archs is None or cc in spec.archs]
    if jobs <= 1:
        return [compile_spec(*w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_job, work, chunksize=4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--module", nargs="+", default=list(KERNEL_MODULES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the result rows to this file")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE",
                        help="only the specs with a tensor of one of these element types (e.g. fp16 bf16)")
    parser.add_argument("--compare", metavar="JSON",
                        help="a --json file of an earlier compile: fail unless every spec, in order, has the same "
                             "ptx_digest (a rename or a move must not change the code)")
    parser.add_argument("--expect-triton", metavar="VERSION",
                        help="refuse to run unless this Triton version is the one imported (a PYTHONPATH check)")
    args = parser.parse_args(argv)
    import triton

    if args.expect_triton and triton.__version__ != args.expect_triton:
        print(f"--expect-triton: expected triton {args.expect_triton}, imported {triton.__version__} "
              f"from {os.path.dirname(triton.__file__)}", file=sys.stderr)
        return 2
    if args.compare and not os.path.isfile(args.compare):  # before minutes of compiling, not after
        print(f"--compare: no such file {args.compare!r} (a --json output of an earlier compile)", file=sys.stderr)
        return 2
    print(f"triton {triton.__version__} ({os.path.dirname(triton.__file__)})")
    rows = compile_all(tuple(args.cc), tuple(args.module), args.jobs, args.dtypes)
    for r in rows:
        status = "ok " if r["ok"] else "BAD"
        note = f"  [stack allowed: {r['stack_note']}]" if r["stack"] and r["ok"] else ""
        print(f"{status} sm_{r['cc']} shared={r['shared']!s:>6} regs={r['registers']!s:>4} stack={r['stack']!s:>5} "
              f"wgmma={r['wgmma']!s:5} {r['label']}"
              + (f"  <- {r['error']}" if r["error"] else "") + note)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - bad} compiled, {bad} failed")
    changed = compare_digests(rows, args.compare) if args.compare else 0
    return 1 if bad or changed else 0


def compare_digests(rows: list[dict], path: str) -> int:
    """Print how the PTX of ``rows`` compares with the compile saved in ``path``; returns how many
    specs differ (a different spec count counts every row)."""
    with open(path) as f:
        before = json.load(f)
    if len(before) != len(rows):
        print(f"--compare: {len(before)} specs in {path}, {len(rows)} now: the spec lists differ")
        return max(len(before), len(rows))
    changed = [(old, new) for old, new in zip(before, rows) if old.get("ptx_digest") != new["ptx_digest"]]
    for old, new in changed:
        print(f"PTX differs: sm_{new['cc']} {new['label']} (was {old['label']})")
    print(f"--compare: {len(rows) - len(changed)} of {len(rows)} specs compile to the same PTX as in {path}")
    return len(changed)


if __name__ == "__main__":
    sys.exit(main())
