"""What the attention kernels' launchers share: tile configs and the tables that hold them, the GPU
arch and operand precision a launch runs with, the grid limit, and the ahead-of-time specs.

Each attention op keeps its tiles in one table, ``_TILES[(pass, arch, kind)][width]`` (:func:`table_key`;
in :mod:`~vidgen.kernels.frame_attention_tuning` and :mod:`~vidgen.kernels.temporal_attention`): ``arch``
is 80 or 90, the tables newer GPUs read too; ``kind`` is "tensor" (fp16/bf16 on tensor cores, fp32
accumulation, wgmma on sm_90) or "fp32" (exact fp32 products on CUDA cores); each entry is written
in :class:`LaunchConfig` notation (``"128x64 w8 s3"``). ``aot_specs()`` of each kernel module declares
every entry with :func:`attention_spec`, typed by :func:`kernel_signature`, and merges the archs that
launch the same code (:func:`merge_archs`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch

from ._aot import MAX_REGISTERS, KernelSpec

ARCHS = (80, 90)  # compute capabilities with tile tables of their own (a newer GPU reads sm_90's)
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
LOG2E = 1.4426950408889634  # scores run in log2 units (exp2); lse is stored in natural-log units
MAX_PROGRAMS = 2**31 - 1  # programs in one launch: the kernels use a 1-D grid (no 65,535 limit)
# Why an fp32 spec may keep a stack: an FMA dot holds its operand rows in registers across the whole
# contraction over D, so wide heads keep one at any tile. fp32 is the reference dtype, not the fast one.
FP32_STACK_NOTE = "fp32 CUDA-core (FMA) products at a wide head"


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int    # query rows per program (forward, dq) / query rows per step (dk/dv)
    block_n: int    # key rows per step (forward, dq) / key rows per program (dk/dv)
    num_warps: int
    num_stages: int

    @classmethod
    @functools.lru_cache(maxsize=None)  # the tables are read at every launch: parse each entry once
    def parse(cls, text: str) -> "LaunchConfig":
        """``"128x64 w8 s3"``: block_m x block_n, warps, pipeline stages (the tables' notation)."""
        tiles, warps, stages = text.split()
        block_m, block_n = tiles.split("x")
        return cls(int(block_m), int(block_n), int(warps[1:]), int(stages[1:]))

    def __str__(self) -> str:
        """The tables' notation, which :meth:`parse` reads back: ``"128x64 w8 s3"``."""
        return f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"

    @property
    def launch_options(self) -> dict[str, int]:
        """The keyword arguments a launch (and its :class:`KernelSpec`) takes from this config: warps,
        pipeline stages and the register cap every attention launch sets (``_aot.MAX_REGISTERS``)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "maxnreg": MAX_REGISTERS}


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for the host side of a launch. ``triton.cdiv`` is a constexpr function that costs
    microseconds per call from Python, several per launch; launch overhead is what small UNet levels pay."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for the host side (see :func:`cdiv`): 0 -> 0, 5 -> 8, 8 -> 8."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def device_arch(device: torch.device) -> int:
    """The arch whose tile tables a launch on ``device`` reads: 90 from sm_90 up, else 80."""
    if device.type != "cuda":
        return 90  # the interpreter: any table entry runs
    major, _ = torch.cuda.get_device_capability(device)
    return 90 if major >= 9 else 80


def table_key(kernel_pass: str, arch: int, dtype: str) -> tuple[str, int, str]:
    """The ``_TILES`` key of ``kernel_pass`` for compute capability ``arch`` (80..89 read sm_80's
    tables, 90 and up sm_90's) and input dtype "fp16", "bf16" or "fp32"."""
    return kernel_pass, 90 if arch >= 90 else 80, "fp32" if dtype == "fp32" else "tensor"


def dot_precision(dtype: str) -> str:
    """The kernels' ``DOT_PRECISION``: fp32 inputs take exact fp32 products (no tf32: the result
    matches PyTorch's default matmul precision); fp16/bf16 ignore it (tensor cores, fp32 accumulation)."""
    return "ieee" if dtype == "fp32" else "tf32"


def check_grid(programs: int, what: str) -> None:
    """Refuse a launch of more programs than one 1-D grid holds; ``what`` names the work in the message."""
    if programs > MAX_PROGRAMS:
        raise ValueError(f"{what} needs {programs} programs; the limit is 2**31 - 1")


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs
# ----------------------------------------------------------------------------------------------
def kernel_signature(kernel, dtype: str, *, fp32_pointers: Collection[str] = (), int32_pointers: Collection[str] = (),
                     fp32_scalars: Collection[str] = (), int64_scalars: Collection[str] = ()) -> dict[str, str]:
    """Triton types of ``kernel``'s arguments for inputs of ``dtype``, read from its own parameter
    list (a hand-written copy would drift). The pointers come first, up to the first ``stride_``
    argument: the input dtype unless named fp32 (softmax statistics) or int32 (index tables).
    After them, constexprs are annotated, the named scalars are fp32 (scales) or int64, and every
    other argument (strides, sizes) is int32."""
    params = list(inspect.signature(kernel.fn).parameters.values())
    first_stride = next(i for i, p in enumerate(params) if p.name.startswith("stride_"))

    def kind(index: int, param: inspect.Parameter) -> str:
        if param.annotation is not inspect.Parameter.empty:
            return "constexpr"
        if index < first_stride:
            return "*fp32" if param.name in fp32_pointers else "*i32" if param.name in int32_pointers else f"*{dtype}"
        return "fp32" if param.name in fp32_scalars else "i64" if param.name in int64_scalars else "i32"

    return {param.name: kind(i, param) for i, param in enumerate(params)}


def stack_allowance(kernel_pass: str, arch: int, dtype: str, width: int, *, fp32_stack: dict[tuple[str, int], int],
                    tensor_stack: dict[tuple[str, int, int], tuple[int, str]] | None = None) -> tuple[int, str]:
    """(stack bytes per thread a config may keep, why): ``fp32_stack[(pass, width)]`` for fp32,
    ``tensor_stack[(pass, arch, width)]`` for fp16/bf16; 0 where the table has no entry."""
    if dtype == "fp32":
        allowed = fp32_stack.get((kernel_pass, width), 0)
        return allowed, FP32_STACK_NOTE if allowed else ""
    return (tensor_stack or {}).get((kernel_pass, arch, width), (0, ""))


def attention_spec(module: str, kernel, signature: dict[str, str], constexprs: dict[str, object],
                   config: LaunchConfig, *, expect_wgmma: bool, stack: tuple[int, str],
                   expect_sm90_ptx: tuple[str, ...] = ()) -> KernelSpec:
    """The spec of one launch of ``kernel`` (a ``@triton.jit`` function of ``module``) at ``config``
    (register cap included), allowed ``stack`` = (bytes, why) of :func:`stack_allowance`."""
    max_stack, stack_note = stack
    return KernelSpec(module=module, kernel=kernel.fn.__name__, signature=signature, constexprs=constexprs,
                      expect_wgmma=expect_wgmma, expect_sm90_ptx=expect_sm90_ptx, max_stack=max_stack,
                      stack_note=stack_note, **config.launch_options)


def merge_archs(specs: Iterable[tuple[KernelSpec, int]]) -> list[KernelSpec]:
    """One spec per distinct (label, wgmma expectation, stack allowance) of the ``(spec, arch)``
    pairs, in first-seen order, with the archs that launch it: a config both archs list is one spec
    compiled for each."""
    merged: dict[tuple, tuple[KernelSpec, list[int]]] = {}
    for spec, arch in specs:
        merged.setdefault((spec.label, spec.expect_wgmma, spec.max_stack), (spec, []))[1].append(arch)
    return [dataclasses.replace(spec, archs=tuple(sorted(archs))) for spec, archs in merged.values()]

