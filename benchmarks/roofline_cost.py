"""The roofline of a recorded step (:mod:`benchmarks.roofline_trace`): ceilings, kernels, and the
configurations that group the same operators into different kernels.

A kernel is a set of operators run as one launch. Its time is

    max(matmul FLOPs / matmul ceiling, vector FLOPs / vector ceiling, bytes / copy bandwidth)
    + launches x per-launch floor

where its bytes are the distinct regions it reads from outside itself and the regions it writes
that something outside it reads afterwards (or that outlive the step). One operator alone writes
everything it produces. A normalisation or reduction whose statistics group exceeds on-chip memory
and whose result is applied back inside the same kernel (GroupNorm's statistics, then its apply)
needs a second pass: the inputs upstream of it are read again and it takes a second launch.

Configurations (:func:`partition`):

* one kernel per operator (``fusible`` never true): diffusers eager, vidgen patched;
* ideal elementwise fusion: every chain of pointwise operators (arithmetic, casts, copies, cat,
  nearest upsampling, gathers) between two other operators is one kernel costing only its ends;
* torch.compile (Inductor, default mode): pointwise operators, reductions and normalisations fuse
  with their neighbours; matmuls, convolutions, attention and vidgen's custom ops stay opaque
  library kernels (no epilogue fusion into cuBLAS/cuDNN), except vidgen's GroupNorm over frames,
  which runs as ATen ops under torch.compile (a normalisation Inductor fuses like any other).

Fusion proceeds in program order: a run of fusible operators between two opaque ones splits into
its connected pieces (by data dependency), each one kernel, so a fused kernel never has to wait
for an operator outside it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Iterable, Sequence

from benchmarks import harness
from benchmarks.roofline_trace import (COMPILED_AS_ATEN, MATMUL, NORMALISATION, ON_CHIP_BYTES, POINTWISE,
                                       REDUCTION, Op, StepGraph, distinct_regions)

# ----------------------------------------------------------------------------------------------
# Ceilings
# ----------------------------------------------------------------------------------------------
# The first H200 run (../shared/gpu/runs/2026-11-30-h200/FINDINGS.md), the low end of each range it
# measured: bf16 matmul 669-677 TFLOP/s (8192^3), device copy 4,028-4,246 GB/s (read + write).
H200_2026_11_30 = {"copy_gbs": 4028.0, "bf16_matmul_tflops": 669.0}
# The H200's FP32 CUDA-core rate from its SM count and boost clock (132 SMs x 128 lanes x 2 FLOP x
# 1.98 GHz), not measured: elementwise work is bandwidth-bound long before it.
VECTOR_TFLOPS = 66.9
# What a kernel costs beyond its work: queued behind other work, a launch on Hopper spends a few
# microseconds ramping its grid up and draining it (an empty kernel takes ~2-4 us back to back).
# Host-side cost (Python, PyTorch's dispatch: 10-50 us per eager operator) is not modelled: it is
# hidden while the GPU is busier than the host; profile_step's "launch gaps" measure when it is not.
LAUNCH_US = 3.0


@dataclasses.dataclass(frozen=True)
class Ceilings:
    matmul_tflops: float  # fp16/bf16 tensor-core rate
    vector_tflops: float
    copy_gbs: float       # bytes read + written per second, in GB/s
    launch_us: float
    source: str           # where they come from, for the output

    def seconds(self, matmul_flops: float, vector_flops: float, nbytes: float, launches: int) -> float:
        work = max(matmul_flops / (self.matmul_tflops * 1e12), vector_flops / (self.vector_tflops * 1e12),
                   nbytes / (self.copy_gbs * 1e9))
        return work + launches * self.launch_us * 1e-6


def _measured_ceilings(data: dict) -> dict | None:
    found = data.get("ceilings") if isinstance(data, dict) else None
    if isinstance(found, dict) and all(isinstance(found.get(k), (int, float)) for k in H200_2026_11_30):
        return found
    return None


def load_ceilings(results_dir: str, launch_us: float = LAUNCH_US) -> Ceilings:
    """The ceilings of the newest GPU validation report in ``results_dir`` that carries them, else of
    the newest result file that measured them (``harness.ceilings()``), else the H200's of
    2026-11-30. Dry runs and predictions (this model's own files) are never read as measurements."""
    newest: tuple | None = None
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("dry_run") or harness.is_prediction(data):
            continue
        found = _measured_ceilings(data)
        date = (data.get("environment") or {}).get("date")
        if found is None or not date:
            continue
        rank = ("validation" in data, date, path)  # a validation report first, then the newest
        if newest is None or rank > newest[0]:
            newest = (rank, found, path, (data.get("environment") or {}).get("gpu"))
    if newest is not None:
        _, found, path, gpu = newest
        return Ceilings(found["bf16_matmul_tflops"], VECTOR_TFLOPS, found["copy_gbs"], launch_us,
                        f"measured on {gpu or 'a GPU'} ({os.path.basename(path)})")
    return Ceilings(H200_2026_11_30["bf16_matmul_tflops"], VECTOR_TFLOPS, H200_2026_11_30["copy_gbs"], launch_us,
                    "H200 of 2026-11-30 (FINDINGS.md; no GPU report in benchmarks/results/)")


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kernel:
    """One launch (or two, for a kernel that needs a statistics pass) over a set of operators."""

    ops: tuple[int, ...]
    role: str
    matmul_flops: float
    vector_flops: float
    read_bytes: int
    write_bytes: int
    launches: int

    @property
    def nbytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def seconds(self, ceilings: Ceilings) -> float:
        return ceilings.seconds(self.matmul_flops, self.vector_flops, self.nbytes, self.launches)


class Costing:
    """Kernel costs over one graph (the consumers of every write, computed once)."""

    def __init__(self, graph: StepGraph):
        self.graph = graph
        self.consumers = graph.consumers()
        self.last_writer = graph.last_writers()

    def _outlives(self, op: Op, allocation: int) -> bool:
        """Whether ``op``'s write of ``allocation`` must reach memory because of what follows the step."""
        if self.last_writer.get(allocation) != op.index:
            return False
        return allocation in self.graph.live or allocation not in self.graph.created

    def _needed(self, op: Op, allocation: int, members: frozenset[int]) -> bool:
        readers = self.consumers.get((op.index, allocation), ())
        return any(r not in members for r in readers) or self._outlives(op, allocation)

    def _upstream(self, op: Op, members: frozenset[int]) -> list[Op]:
        """``op`` and the members it depends on, transitively."""
        ops, seen, todo = [], set(), [op.index]
        while todo:
            index = todo.pop()
            if index in seen:
                continue
            seen.add(index)
            ops.append(self.graph.ops[index])
            todo += [a.writer for a in self.graph.ops[index].reads if a.writer in members]
        return ops

    def _external_reads(self, ops: Iterable[Op], members: frozenset[int]) -> list:
        return distinct_regions(a for op in ops for a in op.reads if a.writer not in members)

    def _second_passes(self, members: frozenset[int]) -> list[Op]:
        """Members whose statistics must be complete before the rest of the kernel can use them and do
        not fit on chip: normalisations over big groups, and big reductions consumed inside."""
        found = []
        for index in members:
            op = self.graph.ops[index]
            if op.group_bytes <= ON_CHIP_BYTES:
                continue
            if op.kind == NORMALISATION or (op.kind == REDUCTION and any(
                    r in members for w in op.writes for r in self.consumers.get((index, w.allocation), ()))):
                found.append(op)
        return found

    def kernel(self, indices: Iterable[int]) -> Kernel:
        members = frozenset(indices)
        ops = [self.graph.ops[i] for i in sorted(members)]
        reads = self._external_reads(ops, members)
        read_bytes = sum(a.nbytes for a in reads)
        single = len(ops) == 1
        writes = distinct_regions(w for op in ops for w in op.writes if single or self._needed(op, w.allocation, members))
        launches = 1
        for op in self._second_passes(members):
            read_bytes += sum(a.nbytes for a in self._external_reads(self._upstream(op, members), members))
            launches += 1
        return Kernel(tuple(sorted(members)), _role(ops), sum(op.matmul_flops for op in ops),
                      sum(op.vector_flops for op in ops), read_bytes, sum(w.nbytes for w in writes), launches)


def _role(ops: Sequence[Op]) -> str:
    """The role of a fused kernel: its matmul's (the largest), else its largest operator's."""
    matmuls = [op for op in ops if op.kind == MATMUL]
    if matmuls:
        return max(matmuls, key=lambda op: op.matmul_flops).role
    return max(ops, key=lambda op: op.read_bytes + op.write_bytes).role


# ----------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------
def never(_op: Op) -> bool:
    return False


def elementwise(op: Op) -> bool:
    """Ideal elementwise fusion: pointwise operators and pure data movement."""
    return op.kind == POINTWISE


def inductor(op: Op) -> bool:
    """What Inductor generates its own kernels for (the rest it calls as library kernels, and vidgen's
    custom ops as the opaque kernels they are, except the GroupNorm over frames, which hands its ATen
    ops to the compiler: ``vidgen.ops.frame_group_norm``)."""
    return op.kind in (POINTWISE, REDUCTION, NORMALISATION) and (
        not op.name.startswith("vidgen::") or op.name in COMPILED_AS_ATEN)


def _pieces(costing: Costing, run: list[int]) -> list[list[int]]:
    """The connected pieces of a run of fusible operators (by data dependency inside the run)."""
    parent = {i: i for i in run}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in run:
        for access in costing.graph.ops[i].reads:
            if access.writer in parent:
                parent[find(i)] = find(access.writer)
    pieces: dict[int, list[int]] = {}
    for i in run:
        pieces.setdefault(find(i), []).append(i)
    return list(pieces.values())


def partition(costing: Costing, fusible: Callable[[Op], bool] = never,
              units: Sequence[Iterable[int]] = ()) -> list[Kernel]:
    """The kernels of a configuration: ``fusible`` operators fused (see the module docstring), and
    each of ``units`` (disjoint sets of operators: hand-written fused kernels) one opaque kernel."""
    unit_of: dict[int, frozenset[int]] = {}
    for unit in units:
        unit = frozenset(unit)
        for i in unit:
            if i in unit_of:
                raise ValueError(f"units: operator {i} is in two units; fusions must not overlap")
            unit_of[i] = unit
    kernels: list[Kernel] = []
    run: list[int] = []

    def flush():
        kernels.extend(costing.kernel(piece) for piece in _pieces(costing, run))
        run.clear()

    for op in costing.graph.ops:
        unit = unit_of.get(op.index)
        if unit is not None:
            flush()
            if op.index == min(unit):
                kernels.append(costing.kernel(unit))
        elif fusible(op):
            run.append(op.index)
        else:
            flush()
            kernels.append(costing.kernel([op.index]))
    flush()
    return kernels


@dataclasses.dataclass(frozen=True)
class Totals:
    """A configuration's sums over its kernels."""

    matmul_flops: float
    vector_flops: float
    nbytes: int
    launches: int
    seconds: float
    role_seconds: dict[str, float]

    @classmethod
    def of(cls, kernels: Sequence[Kernel], ceilings: Ceilings) -> "Totals":
        roles: dict[str, float] = {}
        for kernel in kernels:
            roles[kernel.role] = roles.get(kernel.role, 0.0) + kernel.seconds(ceilings)
        return cls(sum(k.matmul_flops for k in kernels), sum(k.vector_flops for k in kernels),
                   sum(k.nbytes for k in kernels), sum(k.launches for k in kernels),
                   sum(roles.values()), roles)

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds


def compute_floor_seconds(graph: StepGraph, ceilings: Ceilings) -> float:
    """The step's matmul FLOPs at the matmul ceiling: no configuration of these operators is faster."""
    return sum(op.matmul_flops for op in graph.ops) / (ceilings.matmul_tflops * 1e12)
