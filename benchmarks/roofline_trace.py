"""One denoising step as a GPU would run it, recorded without a GPU: every operator with its FLOPs,
the bytes it must move, its data dependencies and its role (``python -m benchmarks.roofline``).

The model runs on the meta device (shapes, no data), under :class:`StepRecorder`, a
``TorchDispatchMode`` that sees every ATen operator and every vidgen custom op (vidgen's ops take
their registered path under a dispatch mode, see ``vidgen.ops._backend.direct_call_ok``):

* FLOPs: torch's flop counter formulas (``torch.utils.flop_counter.flop_registry``: matmuls,
  convolutions, fused attention) and :data:`VIDGEN_FLOPS` for vidgen's ops; other operators get
  an estimate of their vector FLOPs (:func:`vector_flops`), which never binds at these sizes.
* Ideal bytes: every tensor an operator reads is read once and everything it writes is written
  once; views, reshapes and allocations are free (no kernel); an in-place operator reads what it
  updates (``copy_`` and fills only write). Reads and writes are counted per distinct region
  (allocation, offset, shape, strides) and per distinct element: an expanded (stride 0)
  operand costs its stored elements. One exception: a normalisation whose group does not fit
  in one SM's on-chip memory (:data:`ON_CHIP_BYTES`) must read its input twice (statistics,
  then apply), in every configuration alike (``Op.two_pass``).
* Launches: one per operator that moves data; views and allocations launch nothing.
* Dependencies: each read names the operator that last wrote the allocation (``Access.writer``),
  so :mod:`benchmarks.roofline_cost` can regroup operators into fused kernels.
* Roles: the role scopes of :class:`benchmarks.step_roles.RoleScopes` (its ``record_function``
  ranges are operators too, so the recorder keeps the open ones), and the operator's name
  outside every scope (``step_roles.kernel_role``), exactly as ``benchmarks/profile_step.py``
  attributes a measured profile.

On the meta device ``F.scaled_dot_product_attention`` would run its math fallback (a materialised
score matrix); :class:`AsOnCuda` sends it to the fused kernel CUDA picks instead (flash
attention for fp16/bf16 heads up to 256 wide without a mask, memory-efficient attention
otherwise). Small tensors built from host data (vidgen's key-frame tables) keep their values in a
CPU shadow (:func:`shadow_of`, :class:`AsOnCuda`), so vidgen's frame-attention FLOPs count exactly
the key frames each query frame reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import weakref
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

from benchmarks.step_roles import RoleScopes, kernel_role, parse_scope, scope_role

# Hopper's largest shared-memory allocation per thread block (227 KiB): a normalisation group of
# at most this many bytes can be held on chip between its statistics and its apply pass.
ON_CHIP_BYTES = 227 * 1024

# Operator kinds (Op.kind).
MATMUL = "matmul"                # tensor-core work: matmuls, convolutions, fused attention, vidgen attention
NORMALISATION = "normalisation"  # statistics over a group, applied back to every element of it
REDUCTION = "reduction"          # fewer outputs than inputs
POINTWISE = "pointwise"          # elementwise arithmetic and pure data movement (casts, copies, cat, ...)
OTHER = "other"                  # anything else: one kernel of its own in every configuration
KINDS = (MATMUL, NORMALISATION, REDUCTION, POINTWISE, OTHER)

_FRAME_GROUP_NORM = "vidgen::frame_group_norm_fwd"
# vidgen ops that torch.compile sees as their ATen ops (the op says so), so Inductor fuses them.
COMPILED_AS_ATEN = frozenset({_FRAME_GROUP_NORM})
_NORMALISATIONS = {"native_group_norm", "native_layer_norm", "native_batch_norm", "_softmax", "_log_softmax",
                   "_safe_softmax", "_native_batch_norm_legit_no_training"}
_REDUCTIONS = {"sum", "mean", "var_mean", "var", "std", "std_mean", "amax", "amin", "max", "min", "prod", "any",
               "all", "argmax", "argmin", "linalg_vector_norm", "norm", "logsumexp", "cumsum"}
# Not tagged pointwise in ATen, but each output element is one input element moved or converted:
# a fusing compiler folds them into their producer or consumer like arithmetic.
# (Names without the in-place suffix: "fill" stands for fill_ too.)
_DATA_MOVEMENT = {"_to_copy", "clone", "copy", "cat", "stack", "repeat", "repeat_interleave", "upsample_nearest1d",
                  "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact2d", "constant_pad_nd",
                  "index", "index_select", "gather", "slice_scatter", "select_scatter", "fill", "zero", "zeros",
                  "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "scalar_tensor", "normal",
                  "uniform", "randn", "rand", "randn_like", "rand_like", "masked_fill", "flip", "roll",
                  "expand_copy", "_unsafe_index", "tril", "triu"}
# In-place operators that overwrite what they update without reading it.
_OVERWRITES = {"copy", "fill", "zero", "normal", "uniform", "random", "bernoulli", "exponential"}
# Allocations: a buffer, no kernel until something writes it.
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# Vector FLOPs per element of the larger operand (an estimate; see vector_flops).
_VECTOR_FLOPS_PER_ELEMENT = {NORMALISATION: 8, REDUCTION: 1, POINTWISE: 1, OTHER: 1}
# Shadow values are kept for tensors up to this many elements (key tables, small index tensors).
_SHADOW_LIMIT = 4096


# ----------------------------------------------------------------------------------------------
# What one step did
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Access:
    """One tensor region an operator reads or writes."""

    allocation: int            # which allocation (views of one share it)
    region: tuple              # (allocation, offset, shape, strides): the same view twice is one region
    nbytes: int                # distinct elements x element size
    writer: int | None = None  # reads: the operator that last wrote the allocation in this step (None: before it)


@dataclasses.dataclass(frozen=True)
class Scope:
    """One entry into a module that has a role (``serial`` tells two calls of one module apart)."""

    serial: int
    role: str
    path: str


@dataclasses.dataclass
class Op:
    """One operator of the step that launches a kernel."""

    index: int
    name: str                 # "aten::mm", "vidgen::frame_attention_fwd"
    kind: str                 # one of KINDS
    reads: tuple[Access, ...]
    writes: tuple[Access, ...]
    matmul_flops: float
    vector_flops: float
    role: str
    scopes: tuple[Scope, ...]  # the role scopes it ran in, outermost first
    group_bytes: int = 0       # normalisations and reductions: bytes of one statistics group (see ON_CHIP_BYTES)

    @property
    def two_pass(self) -> bool:
        """A normalisation whose group does not fit on chip reads its input twice (statistics, then apply)."""
        return self.kind == NORMALISATION and self.group_bytes > ON_CHIP_BYTES

    @property
    def read_bytes(self) -> int:
        return sum(a.nbytes for a in distinct_regions(self.reads))

    @property
    def write_bytes(self) -> int:
        return sum(a.nbytes for a in distinct_regions(self.writes))


@dataclasses.dataclass
class StepGraph:
    """The operators of one denoising step in the order they ran, and what a regrouping needs to know
    about the memory they touched."""

    ops: list[Op]
    live: frozenset[int]                      # allocations still referenced when the step ended
    created: frozenset[int]                   # allocations made during the step (the rest existed before)
    module_types: dict[str, tuple[str, ...]]  # module path -> class names, most derived first

    def consumers(self) -> dict[tuple[int, int], list[int]]:
        """(writer op, allocation) -> the operators that read what that writer wrote."""
        found: dict[tuple[int, int], list[int]] = {}
        for op in self.ops:
            for access in op.reads:
                if access.writer is not None:
                    found.setdefault((access.writer, access.allocation), []).append(op.index)
        return found

    def last_writers(self) -> dict[int, int]:
        """allocation -> the last operator that wrote it in the step."""
        return {access.allocation: op.index for op in self.ops for access in op.writes}


def distinct_regions(accesses: Iterable[Access]) -> list[Access]:
    seen, kept = set(), []
    for access in accesses:
        if access.region not in seen:
            seen.add(access.region)
            kept.append(access)
    return kept


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------
def _values(t: torch.Tensor) -> torch.Tensor | None:
    """The values of ``t``: itself on a real device, its shadow on the meta device (or None)."""
    return t if t.device.type != "meta" else shadow_of(t)


def frame_attention_flops(q: torch.Tensor, k: torch.Tensor, counts: torch.Tensor) -> int:
    """``vidgen::frame_attention_fwd``: query frame f attends to the M tokens of each of its
    ``counts[f]`` distinct key frames; Q K^T and P V cost 2 D FLOPs per (query, key, head) each."""
    B, F_, N, H, D = q.shape
    M = k.shape[2]
    values = _values(counts)
    if values is None:
        raise ValueError("frame_attention_flops: counts holds no values (a meta tensor without a shadow: a key "
                         "table prepared outside the recorder); its FLOPs depend on them")
    return 4 * B * N * H * D * M * int(values.sum())


def temporal_attention_flops(q: torch.Tensor) -> int:
    """``vidgen::temporal_attention_fwd``: every (video, token, head) attends over its F frames."""
    B, F_, N, H, D = q.shape
    return 4 * B * N * H * F_ * F_ * D


def _frame_attention_fwd(args, out) -> tuple[float, float]:
    q, k, _v, _table, counts = args[:5]
    return frame_attention_flops(q, k, counts), 0.0


def _frame_attention_bwd(args, out) -> tuple[float, float]:
    # dS = P (dO V^T - delta) recomputes S = Q K^T and P V's transpose products: 5 matmuls of the
    # forward's 2, i.e. 2.5x its FLOPs.
    _dout, q, k, _v, _out, _lse, _table, counts = args[:8]
    return 2.5 * frame_attention_flops(q, k, counts), 0.0


def _temporal_attention_fwd(args, out) -> tuple[float, float]:
    return temporal_attention_flops(args[0]), 0.0


def _temporal_attention_bwd(args, out) -> tuple[float, float]:
    return 2.5 * temporal_attention_flops(args[1]), 0.0


def frame_group_norm_vector_flops(x: torch.Tensor, silu: bool) -> int:
    """``vidgen::frame_group_norm_fwd``: per element, the statistics pass's add and multiply-add, the
    apply pass's multiply-add, and the SiLU (an exponential, an add, a division, a multiply)."""
    return (4 + (4 if silu else 0)) * x.numel()


def _frame_group_norm_fwd(args, out) -> tuple[float, float]:
    return 0.0, float(frame_group_norm_vector_flops(args[0], args[6]))


def _frame_group_norm_bwd(args, out) -> tuple[float, float]:
    # two passes that each recompute x_hat (and the SiLU's derivative) and reduce or apply
    return 0.0, float(3 * frame_group_norm_vector_flops(args[1], args[7]))


def geglu_flops(x: torch.Tensor, weight: torch.Tensor) -> int:
    """``vidgen::geglu_fwd``: the (M, K) x (K, 2N) projection, 2 FLOPs per multiply-add."""
    return 2 * (x.numel() // x.shape[-1]) * weight.shape[0] * weight.shape[1]


# the epilogue per output element: two bias adds, the erf GELU (an erf, three multiplies, an add), the product
_GEGLU_EPILOGUE_FLOPS = 8


def _geglu_fwd(args, out) -> tuple[float, float]:
    return float(geglu_flops(args[0], args[1])), float(_GEGLU_EPILOGUE_FLOPS * out.numel())


def _geglu_bwd(args, out) -> tuple[float, float]:
    # one matmul recomputes the projection, then the Linear's two (dx, dweight); the GELU's
    # derivative and the two products per output element
    dy, x, weight = args[:3]
    return float(3 * geglu_flops(x, weight)), float(2 * _GEGLU_EPILOGUE_FLOPS * dy.numel())


def _linear_residual_fwd(args, out) -> tuple[float, float]:
    # the (M, K) x (K, N) product, then the bias and the residual added per output element
    x, weight = args[:2]
    return float(2 * (x.numel() // x.shape[-1]) * weight.shape[0] * weight.shape[1]), float(2 * out.numel())


def _elementwise(per_element: int) -> Callable:
    def flops(args, out) -> tuple[float, float]:
        first = out[0] if isinstance(out, (tuple, list)) else out
        return 0.0, float(per_element * first.numel())
    return flops


# vidgen's custom ops -> (args, out) -> (matmul FLOPs, vector FLOPs). A vidgen op missing here is an
# error, not zero FLOPs (StepRecorder raises), so a new op cannot silently cost nothing.
VIDGEN_FLOPS: dict[str, Callable] = {
    "vidgen::frame_attention_fwd": _frame_attention_fwd,
    "vidgen::frame_attention_fp8_fwd": _frame_attention_fwd,
    "vidgen::frame_attention_bwd": _frame_attention_bwd,
    "vidgen::temporal_attention_fwd": _temporal_attention_fwd,
    "vidgen::temporal_attention_bwd": _temporal_attention_bwd,
    "vidgen::frame_group_norm_fwd": _frame_group_norm_fwd,
    "vidgen::frame_group_norm_bwd": _frame_group_norm_bwd,
    "vidgen::frame_group_norm_statistics": _elementwise(2),
    "vidgen::frame_group_norm_apply": lambda args, out: (0.0, float(frame_group_norm_vector_flops(args[0], args[6]) // 2)),
    # guidance: a few multiply-adds per element (composition, CFG, the DDIM update); noise: Philox
    # rounds and a Box-Muller transform per element
    "vidgen::geglu_fwd": _geglu_fwd,
    "vidgen::geglu_bwd": _geglu_bwd,
    "vidgen::linear_residual_fwd": _linear_residual_fwd,
    "vidgen::guided_step": _elementwise(16),
    "vidgen::correlated_noise": _elementwise(40),
    "vidgen::add_noise": _elementwise(44),
}


def vector_flops(kind: str, args, out) -> float:
    """Non-tensor-core FLOPs of an ATen operator without a flop-counter formula: a few per element of
    its largest operand (:data:`_VECTOR_FLOPS_PER_ELEMENT`). An estimate: at a vector rate of tens of
    TFLOP/s these operators are bandwidth-bound by a wide margin, so it never sets a time."""
    largest = max((t.numel() for t in _tensors((args, out))), default=0)
    return float(_VECTOR_FLOPS_PER_ELEMENT.get(kind, 1) * largest)


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------
def _unsuffixed(name: str) -> str:
    """An ATen name without its in-place suffix (``add_`` -> ``add``)."""
    return name[:-1] if name.endswith("_") else name


def op_name(func) -> str:
    return func._schema.name  # "aten::mm", "vidgen::frame_attention_fwd"


def kind_of(func) -> str:
    """The kind (:data:`KINDS`) of an operator that moves data."""
    name = op_name(func)
    base = name.split("::", 1)[1]
    if name.startswith("vidgen::"):
        # attention and the matmuls with epilogues (GEGLU, residual Linear) on tensor cores; the GroupNorm over frames a
        # normalisation (statistics, then apply: two passes when a video's group exceeds on-chip
        # memory); the fused elementwise ops (guidance, noise) one kernel each. Opaque to a compiler
        # but for COMPILED_AS_ATEN.
        if "attention" in name or name.startswith(("vidgen::geglu", "vidgen::linear_residual")):
            return MATMUL
        return NORMALISATION if name == _FRAME_GROUP_NORM else OTHER
    if func._overloadpacket in flop_registry:
        return MATMUL
    if base in _NORMALISATIONS:
        return NORMALISATION
    if base in _REDUCTIONS:
        return REDUCTION
    if torch.Tag.pointwise in func.tags or _unsuffixed(base) in _DATA_MOVEMENT:
        return POINTWISE
    return OTHER


def _reduced_bytes(args, out) -> int:
    """Bytes of input that a reduction folds into each output element."""
    x = _tensors(args)[0]
    outputs = max(_tensors(out)[0].numel(), 1)
    return x.numel() // outputs * x.element_size()


def normalisation_group_bytes(name: str, args) -> int:
    """Bytes of one statistics group of a normalisation (what must stay on chip for a single pass)."""
    x = args[0]
    if name == "aten::native_group_norm":
        channels, spatial, groups = args[4], args[5], args[6]
        return channels // groups * spatial * x.element_size()
    if name == _FRAME_GROUP_NORM:  # (x, weight, bias, num_frames, num_groups, ...): a group spans F frames
        num_frames, groups = args[3], args[4]
        return x[0].numel() // groups * num_frames * x.element_size()
    if name == "aten::native_layer_norm":
        return math.prod(args[1]) * x.element_size()
    if name in ("aten::_softmax", "aten::_log_softmax", "aten::_safe_softmax"):
        return x.shape[args[1]] * x.element_size()
    return 0  # batch norm (not in these models): treated as fitting


# ----------------------------------------------------------------------------------------------
# Shadow values of small tensors on the meta device
# ----------------------------------------------------------------------------------------------
_SHADOWS = WeakIdKeyDictionary()  # meta tensor -> CPU tensor with its values


def shadow_of(t: torch.Tensor) -> torch.Tensor | None:
    """The values of a small meta tensor computed from host data, or None."""
    return _SHADOWS.get(t)


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _propagate_shadows(func, args, kwargs, out) -> None:
    """Run ``func`` on the CPU copies of its inputs when every meta input has one and the outputs are
    small, and keep the results as the outputs' shadows (views of a shadow stay views of it, so an
    in-place update of a view updates its base's shadow too)."""
    outputs = [t for t in _tensors(out) if t.device.type == "meta"]
    if not outputs or any(t.numel() > _SHADOW_LIMIT for t in outputs):
        return
    inputs = [t for t in _tensors((args, kwargs)) if t.device.type == "meta"]
    if any(shadow_of(t) is None for t in inputs):
        return
    if not inputs and op_name(func).split("::", 1)[1] in _ALLOCATIONS:
        return  # no values to know

    def on_cpu(x):
        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            return shadow_of(x)
        if isinstance(x, torch.device) and x.type == "meta":
            return torch.device("cpu")
        return x

    cpu_args, cpu_kwargs = torch.utils._pytree.tree_map(on_cpu, (args, kwargs))
    try:
        cpu_out = func(*cpu_args, **cpu_kwargs)
    except Exception:  # an operator without a CPU kernel for these arguments: no shadow, no harm
        return
    for meta, cpu in zip(_tensors(out), _tensors(cpu_out)):
        if meta.device.type == "meta" and shadow_of(meta) is None:
            _SHADOWS[meta] = cpu


# ----------------------------------------------------------------------------------------------
# The recorder
# ----------------------------------------------------------------------------------------------
def _region(t: torch.Tensor, allocation: int) -> tuple[tuple, int]:
    """(region key, distinct bytes) of a tensor view: stride-0 dims hold one element."""
    distinct = 0 if t.numel() == 0 else math.prod(s for s, st in zip(t.shape, t.stride()) if st != 0)
    return (allocation, t.storage_offset(), tuple(t.shape), tuple(t.stride())), distinct * t.element_size()


class _StepEnd(Exception):
    """Raised at the next step's first UNet call: the step is recorded, the rest of the run is not needed."""


class StepRecorder(TorchDispatchMode):
    """Records every operator run while ``recording`` is set (see the module docstring).

    Allocations are told apart by their storage: an operator output whose storage is none of its
    inputs' is a new allocation; one that shares an input's storage is a view of it (or the input
    itself, for an in-place operator). Storages created before the recorder are found on first use.
    """

    def __init__(self):
        super().__init__()
        self.recording = False
        self.ops: list[Op] = []
        self._ids = itertools.count()
        self._allocation: dict[int, int] = {}   # storage address -> allocation id (updated on reuse)
        self._writer: dict[int, int] = {}       # allocation -> last op that wrote it in the step
        self._alive: dict[int, int] = {}        # allocation -> tensor objects of it still referenced
        self._watchers: dict[int, list] = {}
        self.created: set[int] = set()          # allocations made while recording
        self._scopes: list[Scope | None] = []
        self._serials = itertools.count()

    # -- identities --------------------------------------------------------------------------------
    def _allocation_of(self, t: torch.Tensor) -> int:
        key = t.untyped_storage()._cdata
        if key not in self._allocation:
            self._allocation[key] = next(self._ids)
        return self._allocation[key]

    def _new_allocation(self, t: torch.Tensor) -> int:
        allocation = next(self._ids)
        self._allocation[t.untyped_storage()._cdata] = allocation
        return allocation

    def _watch(self, t: torch.Tensor, allocation: int) -> None:
        """Count ``t`` as a live reference to ``allocation`` until it is freed."""
        self._alive[allocation] = self._alive.get(allocation, 0) + 1

        def freed(_ref, allocation=allocation, alive=self._alive):
            alive[allocation] -= 1

        self._watchers.setdefault(allocation, []).append(weakref.ref(t, freed))

    def graph(self, models: Iterable[torch.nn.Module] = (), live: frozenset[int] | None = None) -> StepGraph:
        """What was recorded, as a :class:`StepGraph` (``live``: default, what is referenced now)."""
        live = self.live_allocations() if live is None else live
        return StepGraph(list(self.ops), live, frozenset(self.created), module_types(models))

    def live_allocations(self) -> frozenset[int]:
        """Allocations made while recording that something still references. (Without a garbage
        collection: under no_grad nothing of a step sits in a reference cycle, and a collection of
        the heap diffusers and transformers import costs about a second.)"""
        return frozenset(a for a, count in self._alive.items() if count > 0)

    # -- scopes --------------------------------------------------------------------------------------
    def _enter_scope(self, func, args, kwargs):
        parsed = parse_scope(args[0]) if args and isinstance(args[0], str) else None
        self._scopes.append(Scope(next(self._serials), *parsed) if parsed else None)
        return func(*args, **kwargs)

    def _exit_scope(self, func, args, kwargs):
        # Ranges close in the reverse order they opened (RoleScopes' hooks are LIFO and always called);
        # the handle passed back is another wrapper of the same object, so it cannot be matched.
        if self._scopes:
            self._scopes.pop()
        return func(*args, **kwargs)

    def open_scopes(self) -> tuple[Scope, ...]:
        return tuple(scope for scope in self._scopes if scope is not None)

    # -- operators -----------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "profiler":
            if func is torch.ops.profiler._record_function_enter_new.default:
                return self._enter_scope(func, args, kwargs)
            if func is torch.ops.profiler._record_function_exit._RecordFunction:
                return self._exit_scope(func, args, kwargs)
            return func(*args, **kwargs)
        input_storages = {t.untyped_storage()._cdata: self._allocation_of(t)
                          for t in _tensors((args, kwargs)) if t.device.type == "meta"}
        out = func(*args, **kwargs)
        _propagate_shadows(func, args, kwargs, out)
        new = []
        for t in _tensors(out):
            if t.device.type != "meta":
                continue
            key = t.untyped_storage()._cdata
            if key in input_storages:
                continue  # a view of an input, or the input updated in place
            allocation = self._new_allocation(t)
            input_storages[key] = allocation
            new.append((t, allocation))
            if self.recording:
                self._watch(t, allocation)
                self.created.add(allocation)
        if self.recording:
            self._record(func, args, kwargs, out, new)
        return out

    def _record(self, func, args, kwargs, out, new) -> None:
        name = op_name(func)
        base = name.split("::", 1)[1]
        mutated, overwritten = self._mutated_arguments(func, args, kwargs)
        if not new and not mutated:
            return  # a view, an alias or a metadata query: no kernel
        if base in _ALLOCATIONS:
            return  # uninitialised memory: no kernel
        tensors_in = [t for t in _tensors((args, kwargs)) if t.device.type == "meta"]
        index = len(self.ops)
        reads = []
        for t in tensors_in:
            if any(t is o for o in overwritten):
                continue
            allocation = self._allocation_of(t)
            region, nbytes = _region(t, allocation)
            reads.append(Access(allocation, region, nbytes, self._writer.get(allocation)))
        writes = []
        for t, allocation in new:
            region, nbytes = _region(t, allocation)
            writes.append(Access(allocation, region, nbytes))
        for t in mutated:
            allocation = self._allocation_of(t)
            region, nbytes = _region(t, allocation)
            writes.append(Access(allocation, region, nbytes))
        for access in writes:
            self._writer[access.allocation] = index
        kind = kind_of(func)
        if name in VIDGEN_FLOPS:
            matmul, vector = VIDGEN_FLOPS[name](args, out)
        elif name.startswith("vidgen::"):
            raise NotImplementedError(f"{name}: no FLOP formula in benchmarks/roofline_trace.py VIDGEN_FLOPS; add one "
                                      "(and its test) before modelling a step that runs it")
        elif func._overloadpacket in flop_registry:
            matmul, vector = float(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)), 0.0
        else:
            matmul, vector = 0.0, vector_flops(kind, args, out)
        scopes = self.open_scopes()
        role = scope_role([s.role for s in scopes]) or kernel_role(name)
        if kind == NORMALISATION:
            group = normalisation_group_bytes(name, args)
        elif kind == REDUCTION:
            group = _reduced_bytes(args, out)
        else:
            group = 0
        self.ops.append(Op(index, name, kind, tuple(reads), tuple(writes), matmul, vector, role, scopes, group))

    @staticmethod
    def _mutated_arguments(func, args, kwargs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(tensors the operator writes in place, the subset it overwrites without reading)."""
        mutated, overwritten = [], []
        overwrites = _unsuffixed(op_name(func).split("::", 1)[1]) in _OVERWRITES
        for position, argument in enumerate(func._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = args[position] if position < len(args) else kwargs.get(argument.name)
            for t in _tensors(value):
                if t.device.type == "meta":
                    mutated.append(t)
                    if overwrites or argument.name == "out":
                        overwritten.append(t)
        return mutated, overwritten


# ----------------------------------------------------------------------------------------------
# Attention as CUDA runs it
# ----------------------------------------------------------------------------------------------
def _cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` as one fused kernel: flash attention where CUDA's dispatch
    takes it (fp16/bf16, no mask, equal head widths up to 256 in multiples of 8), else the
    memory-efficient kernel."""
    head = query.shape[-1]
    flash = (attn_mask is None and not enable_gqa and query.dtype in (torch.float16, torch.bfloat16)
             and head == value.shape[-1] and head % 8 == 0 and head <= 256)
    if flash:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                   scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, False, dropout_p,
                                                                   is_causal, scale=scale)[0]


class AsOnCuda(TorchFunctionMode):
    """Runs meta tensors the way CUDA would run them, where the meta device would differ:
    ``F.scaled_dot_product_attention`` goes to the fused kernel CUDA picks (not the math fallback),
    and host data put on the device (``torch.tensor(data, device=...)``, which dispatches no
    operator) arrives through a copy, so its values stay known (:func:`shadow_of`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            return _cuda_sdpa(*args, **kwargs)
        if func in (torch.tensor, torch.as_tensor) and torch.device(kwargs.get("device") or "cpu").type == "meta":
            return func(*args, **{**kwargs, "device": "cpu"}).to("meta")
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
def record_step(run: Callable[[], object], marker: torch.nn.Module, models: Iterable[torch.nn.Module],
                calls_per_step: int = 1) -> StepGraph:
    """Record one denoising step of ``run`` (a sampling loop of at least two steps on meta tensors).

    The step is what runs from the first call of ``marker`` (the denoiser) to the first call of the
    next step (call ``calls_per_step + 1``): the UNet forwards, the guidance and sampler step, and
    the next step's input preparation, as ``benchmarks/profile_step.py`` times a step. The run is
    stopped there. ``models`` get the role scopes.
    """
    models = list(models)
    recorder = StepRecorder()
    calls, live = 0, None

    def at_call(_module, _args):
        nonlocal calls, live
        calls += 1
        if calls == 1:
            recorder.recording = True
        elif calls == calls_per_step + 1:
            recorder.recording = False
            live = recorder.live_allocations()
            raise _StepEnd

    handle = marker.register_forward_pre_hook(at_call)
    try:
        with torch.no_grad(), AsOnCuda(), recorder, RoleScopes(models):
            run()
    except _StepEnd:
        pass
    finally:
        handle.remove()
    if live is None:
        raise RuntimeError(f"record_step: the run made {calls} denoiser call(s) and ended before the next step's "
                           f"first one (call {calls_per_step + 1}); run at least two steps")
    return recorder.graph(models, live)


def module_types(models: Iterable[torch.nn.Module]) -> dict[str, tuple[str, ...]]:
    """Module path -> its class names, most derived first (the first model's, where paths repeat)."""
    types: dict[str, tuple[str, ...]] = {}
    for model in models:
        for path, module in model.named_modules():
            types.setdefault(path, tuple(cls.__name__ for cls in type(module).__mro__))
    return types


@contextlib.contextmanager
def recording(models: Iterable[torch.nn.Module] = ()):
    """Record everything run inside the block (small known graphs); yields the recorder, whose
    :meth:`StepRecorder.graph` is the result."""
    recorder = StepRecorder()
    with torch.no_grad(), AsOnCuda(), recorder, RoleScopes(list(models)):
        recorder.recording = True
        yield recorder
        recorder.recording = False
