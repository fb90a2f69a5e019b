"""Fusions the roofline model can price before anyone writes them: each :class:`Fusion` names the
operators of a recorded step (:class:`benchmarks.roofline_trace.StepGraph`) that one hand-written
kernel would run, and :func:`savings` prices that kernel against the step as it is, and against
the step under torch.compile (what is left once Inductor has fused what it can).

* GroupNorm + SiLU: a ResNet's GroupNorm (diffusers' per-frame one, or Tune-A-Video's 5-D
  ``FramePooledGroupNorm``) and the SiLU that reads it, one kernel (the normalised tensor is never
  written).
* motion-module GroupNorm + layout change: what a motion module (AnimateDiff's, UNet3D's, SVD's
  spatio-temporal transformer) does before its first matmul: the GroupNorm, its casts and the
  frame/space layout change feeding ``proj_in``, one kernel.
* GEGLU feed-forward: GELU(gate) x value in the epilogue of the projection that makes them (the
  8C-wide projection is never written).
* residual add into the matmul epilogue: ``x + f(x)`` where f ends in a matmul or convolution, the
  add (and what follows it elementwise, e.g. diffusers' ``/ output_scale_factor``) done by the
  matmul's epilogue.
* Tune-A-Video's 5-D GroupNorm: ``FramePooledGroupNorm``'s casts, statistics and apply, one kernel
  (part of the GroupNorm + SiLU fusion; priced on its own to show how much is the 5-D norm itself).

A fusion's savings are the differences of whole-step predictions, so they count every byte and
launch the fused kernel avoids and nothing else. Fusions overlap (a GroupNorm + SiLU unit contains
a 5-D GroupNorm unit): their savings do not add; :func:`combined` takes the non-overlapping ones.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from benchmarks.roofline_cost import Ceilings, Costing, Totals, inductor, never, partition
from benchmarks.roofline_trace import MATMUL, NORMALISATION, POINTWISE, REDUCTION, Op, StepGraph

_GROUP_NORMS = {"GroupNorm"}
_MOTION_MODULES = {"AnimateDiffTransformer3D", "TransformerTemporalModel", "TransformerSpatioTemporalModel"}
_EPILOGUE_MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution"}


def _disjoint(units: Iterable[frozenset[int]]) -> list[frozenset[int]]:
    """``units`` without those that overlap one kept before them (two matmuls can end in one add),
    and without single operators (already one kernel: vidgen's fused GroupNorm over frames)."""
    taken: set[int] = set()
    kept = []
    for unit in units:
        if len(unit) > 1 and not unit & taken:
            kept.append(unit)
            taken |= unit
    return kept


def _types(graph: StepGraph, path: str) -> tuple[str, ...]:
    return graph.module_types.get(path, ())


def _by_scope(graph: StepGraph, classes: set[str], innermost: bool = False) -> dict[int, list[Op]]:
    """Operators grouped by the call (scope serial) of a module of one of ``classes`` they ran in
    (the innermost such module, or only when it is the innermost role scope)."""
    groups: dict[int, list[Op]] = {}
    for op in graph.ops:
        scopes = op.scopes[-1:] if innermost else op.scopes
        for scope in reversed(scopes):
            if classes & set(_types(graph, scope.path)):
                groups.setdefault(scope.serial, []).append(op)
                break
    return groups


def _readers(costing: Costing, op: Op) -> list[Op]:
    graph = costing.graph
    return [graph.ops[r] for w in op.writes for r in costing.consumers.get((op.index, w.allocation), ())]


def group_norm_silu(costing: Costing) -> list[frozenset[int]]:
    units = []
    for ops in _by_scope(costing.graph, _GROUP_NORMS, innermost=True).values():
        silu = [r for r in _readers(costing, ops[-1]) if r.name == "aten::silu"]
        if silu:
            units.append(frozenset(op.index for op in ops + silu[:1]))
    return units


def frame_pooled_group_norm(costing: Costing) -> list[frozenset[int]]:
    return [frozenset(op.index for op in ops)
            for ops in _by_scope(costing.graph, {"FramePooledGroupNorm"}, innermost=True).values()]


def _connected(costing: Costing, ops: list[Op]) -> list[list[Op]]:
    """``ops`` split into pieces connected by data dependencies among them."""
    members = {op.index: op for op in ops}
    parent = {i: i for i in members}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for op in ops:
        for access in op.reads:
            if access.writer in members:
                parent[find(op.index)] = find(access.writer)
    pieces: dict[int, list[Op]] = {}
    for op in ops:
        pieces.setdefault(find(op.index), []).append(op)
    return list(pieces.values())


def motion_module_prologue(costing: Costing) -> list[frozenset[int]]:
    units = []
    for ops in _by_scope(costing.graph, _MOTION_MODULES).values():
        prologue = []
        for op in ops:
            if op.kind not in (POINTWISE, NORMALISATION, REDUCTION):
                break
            prologue.append(op)
        units += [frozenset(op.index for op in piece) for piece in _connected(costing, prologue)
                  if any(op.kind in (NORMALISATION, REDUCTION) for op in piece)]
    return units


def geglu(costing: Costing) -> list[frozenset[int]]:
    return [frozenset(op.index for op in ops) for ops in _by_scope(costing.graph, {"GEGLU"}).values()
            if any(op.kind == MATMUL for op in ops)]


def residual_epilogue(costing: Costing) -> list[frozenset[int]]:
    """A matmul whose only reader starts an elementwise chain (one reader each, same size) that
    adds another tensor of that size (the residual), and the scalings right after the add."""
    units = []
    for op in costing.graph.ops:
        if op.name not in _EPILOGUE_MATMULS:
            continue
        size, chain, added = op.write_bytes, [op], False
        while True:
            readers = _readers(costing, chain[-1])
            if len(readers) != 1 or readers[0].kind != POINTWISE or readers[0].write_bytes != size:
                break
            following = readers[0]
            if added and following.name not in ("aten::div", "aten::mul"):
                break
            added = added or (following.name == "aten::add" and any(
                a.writer != chain[-1].index and a.nbytes == size for a in following.reads))
            chain.append(following)
        if added:
            units.append(frozenset(o.index for o in chain))
    return units


@dataclasses.dataclass(frozen=True)
class Fusion:
    name: str
    units: Callable[[Costing], list[frozenset[int]]]
    what: str


FUSIONS = (
    Fusion("GroupNorm + SiLU", group_norm_silu, "a ResNet's GroupNorm (per frame, or 5-D) and its SiLU in one kernel"),
    Fusion("motion-module GroupNorm + layout change", motion_module_prologue,
           "a motion module's GroupNorm, casts and frame/space layout change before proj_in, one kernel"),
    Fusion("GEGLU feed-forward", geglu, "GELU(gate) x value in the epilogue of the projection that makes them"),
    Fusion("residual add into the matmul epilogue", residual_epilogue,
           "x + f(x) (and a following scale) in the epilogue of f's last matmul or convolution"),
    Fusion("Tune-A-Video 5-D GroupNorm", frame_pooled_group_norm,
           "FramePooledGroupNorm's casts, statistics and apply in one kernel (inside GroupNorm + SiLU)"),
)


@dataclasses.dataclass(frozen=True)
class Saving:
    """What one fusion saves in one step, against the step as it is and under torch.compile."""

    fusion: str
    kernels: int          # fused kernels per step
    bytes: int
    launches: int
    ms: float
    share: float          # of the step as it is
    ms_after_compile: float
    share_after_compile: float


def savings(costing: Costing, ceilings: Ceilings, fusions: Iterable[Fusion] = FUSIONS) -> list[Saving]:
    """Each fusion's savings on the step of ``costing`` (vidgen patched, one kernel per operator),
    and on the same step under torch.compile (the fusion as an opaque kernel, Inductor around it)."""
    base = Totals.of(partition(costing, never), ceilings)
    compiled = Totals.of(partition(costing, inductor), ceilings)
    found = []
    for fusion in fusions:
        units = _disjoint(fusion.units(costing))
        if not units:
            continue
        fused = Totals.of(partition(costing, never, units), ceilings)
        fused_compiled = Totals.of(partition(costing, inductor, units), ceilings)
        found.append(Saving(fusion.name, len(units), base.nbytes - fused.nbytes, base.launches - fused.launches,
                            base.ms - fused.ms, (base.seconds - fused.seconds) / base.seconds,
                            compiled.ms - fused_compiled.ms,
                            (compiled.seconds - fused_compiled.seconds) / compiled.seconds))
    return found


def combined(costing: Costing, fusions: Iterable[Fusion] = FUSIONS) -> list[frozenset[int]]:
    """The units of every fusion that overlaps none taken before it (in ``fusions`` order, so a
    larger fusion listed first wins over the smaller one inside it)."""
    return _disjoint(unit for fusion in fusions for unit in fusion.units(costing))


def combined_under_compile(costing: Costing, ceilings: Ceilings, fusions: Iterable[Fusion] = FUSIONS
                           ) -> list[frozenset[int]]:
    """:func:`combined`, keeping each fusion (in ``fusions`` order) only if it makes the compiled step
    faster: an opaque fused kernel can cost Inductor a fusion of its own (a residual add it would have
    put into the LayerNorm after it), and nobody would build a fusion that loses under compile."""
    kept: list[Fusion] = []
    best = Totals.of(partition(costing, inductor), ceilings).seconds
    for fusion in fusions:
        trial = Totals.of(partition(costing, inductor, combined(costing, [*kept, fusion])), ceilings).seconds
        if trial < best:
            kept, best = [*kept, fusion], trial
    return combined(costing, kept)
