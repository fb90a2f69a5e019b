"""What the matmul-with-epilogue kernels (:mod:`~vidgen.kernels.geglu`,
:mod:`~vidgen.kernels.linear_residual`) share: the order their programs walk the output tiles in,
the operand kinds and precisions, and how a launch reads its kernel's config table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import LaunchConfig

# Tile rows per group of :func:`output_tile`: a group's programs share GROUP_M x BLOCK_M rows of x
# and the weight columns of one tile column, which stay in L2 while the group runs.
GROUP_M = 8


@triton.jit
def output_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """``(rows, cols, safe_rows, safe_cols)`` of program ``pid``'s (BLOCK_M, BLOCK_N) tile of an (M, N)
    output: its row and column indices, and the same wrapped onto valid rows and columns (int64, for
    the address arithmetic), which the K loop loads so that only K needs a mask (the tails' results
    are never stored). Programs walk the tiles in groups of GROUP_M tile rows, column by column
    within a group, so the weight columns a group shares stay in L2 while its x tiles stream
    (rather than every program of a row reading a different slice of the weight)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
    pid_n = (pid % (GROUP_M * tiles_n)) // group_rows
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, (rows % M).to(tl.int64), (cols % N).to(tl.int64)


def kind(dtype: torch.dtype) -> str:
    """The config-table kind of a launch on ``dtype`` operands: "tensor" (fp16/bf16 on tensor cores,
    fp32 accumulation, wgmma on sm_90) or "fp32" (exact fp32 products on CUDA cores)."""
    return "fp32" if dtype == torch.float32 else "tensor"


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: IEEE for fp32 (never tf32, as diffusers' fp32 path runs by
    default); tf32 is ignored for fp16/bf16 operands."""
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_config(tiles: dict[tuple[int, str], tuple[str, int]], arch: int, dtype: torch.dtype
                  ) -> tuple[LaunchConfig, int]:
    """(tile config, BLOCK_K) of a launch on ``arch`` with ``dtype`` operands, from a kernel's table
    ``tiles[(arch, kind)] = ("128x128 w8 s3", BLOCK_K)``."""
    text, block_k = tiles[(arch, kind(dtype))]
    return LaunchConfig.parse(text), block_k
