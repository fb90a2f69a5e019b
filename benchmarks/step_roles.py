"""What each part of a denoising step does: the role of a UNet module or of a kernel, for profiles
and memory measurements that say where the time and the bytes go.

Roles (``ROLES``): convolution, spatial self-attention (Tune-A-Video's sparse-causal frame
attention included), cross-attention, temporal attention, norm, feed-forward, elementwise, other
matmul (projections outside attention and feed-forward, the time embedding), attention
(unscoped), other. ``GAP`` is not a kernel role: wall time minus summed kernel time, the time a
step waits on the CPU (Python, launches, synchronisation).

A module's role comes from its class and its path (:func:`module_role`, pure); a kernel's from
the role scopes it was launched inside (:func:`scope_role`), and only when it was launched outside
every scope, from its name (:func:`kernel_role`). :class:`RoleScopes` wraps a model's modules in
``torch.profiler.record_function`` ranges named ``role:<role>:<path>`` (forward pre/post hooks,
only while the context is active), which is what the profiler attributes by.

An AnimateDiff motion module (``AnimateDiffTransformer3D``, ``TransformerTemporalModel``) is a
container: everything run inside it counts as temporal attention, its GroupNorm, projections
and feed-forward included, because vidgen's copy-free forward replaces the module as a whole
(and runs its parts without calling the submodules); splitting diffusers' side by submodule
would compare different work on the two sides.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch

CONV = "convolution"
SPATIAL = "spatial self-attention"
CROSS = "cross-attention"
TEMPORAL = "temporal attention"
NORM = "norm"
FEED_FORWARD = "feed-forward"
ELEMENTWISE = "elementwise"
MATMUL = "other matmul"
ATTENTION_UNSCOPED = "attention (unscoped)"
OTHER = "other"
ROLES = (CONV, SPATIAL, CROSS, TEMPORAL, NORM, FEED_FORWARD, ELEMENTWISE, MATMUL, ATTENTION_UNSCOPED, OTHER)
GAP = "launch gaps / CPU-bound"

SCOPE_PREFIX = "role:"
CONTAINER_ROLES = frozenset({TEMPORAL})

# Class names (anywhere in the module's MRO, so subclasses such as vidgen's FramePooledGroupNorm
# classify as their base) that give a module its role.
_TEMPORAL_MODULES = {"AnimateDiffTransformer3D", "TransformerTemporalModel", "TransformerSpatioTemporalModel"}
_CONV_MODULES = {"Conv1d", "Conv2d", "Conv3d", "LoRACompatibleConv"}
_NORM_MODULES = {"GroupNorm", "LayerNorm", "RMSNorm", "AdaGroupNorm"}
_FEED_FORWARD_MODULES = {"FeedForward", "GEGLU", "ApproximateGELU"}
# Path parts that put an attention module on the frame axis even outside a motion-module class.
_TEMPORAL_PATH = re.compile(r"(^|\.)(attn_temp|motion_modules|temp_attentions|transformer_in)(\.|$)")

# Kernel (CUDA) or operator (CPU) names, first match wins: convolution kernels contain "gemm"
# (implicit GEMM) and vidgen's attention kernels say which attention they are, so the specific
# patterns come before the general ones.
_KERNEL_PATTERNS = [
    (CONV, re.compile(r"conv(?!ert)|cudnn|implicit_gemm|fprop|dgrad|wgrad|winograd|im2col", re.I)),
    (TEMPORAL, re.compile(r"temporal", re.I)),
    (SPATIAL, re.compile(r"frame_att", re.I)),
    (ATTENTION_UNSCOPED, re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    (NORM, re.compile(r"norm|welford", re.I)),
    (MATMUL, re.compile(r"gemm|matmul|aten::(mm|bmm|addmm|baddbmm|linear)\b|cublas|cutlass|xmma|nvjet|wgmma", re.I)),
    (ELEMENTWISE, re.compile(r"elementwise|vectorized|unrolled|reduce|copy|cat|index|fill|add|mul|div|sub|silu|"
                             r"gelu|sigmoid|upsample|interpolate|memcpy|memset|where|pow|exp|clamp|transpose|permute|"
                             r"contiguous|triton_|guided_step|noise|aten::", re.I)),
]


def module_role(path: str, type_names: Sequence[str], is_cross_attention: bool | None = None) -> str | None:
    """The role of the module at ``path`` (``"down_blocks.0.attentions.0.transformer_blocks.0.attn2"``)
    whose class and base classes are named ``type_names``; None for a module that only holds
    others (a block, a ResNet: its parts have roles, its own arithmetic falls back to kernel
    names). ``is_cross_attention`` (diffusers' ``Attention.is_cross_attention``) decides between
    self- and cross-attention when given; otherwise the name does (``attn2`` is diffusers' text
    attention)."""
    types = set(type_names)
    leaf = path.rsplit(".", 1)[-1]
    if types & _TEMPORAL_MODULES:
        return TEMPORAL
    if "Attention" in types:
        if _TEMPORAL_PATH.search(path):
            return TEMPORAL
        cross = is_cross_attention if is_cross_attention is not None else leaf == "attn2"
        return CROSS if cross else SPATIAL
    if types & _CONV_MODULES:
        return CONV
    if types & _NORM_MODULES:
        return NORM
    if types & _FEED_FORWARD_MODULES:
        return FEED_FORWARD
    return None


def role_of(path: str, module: torch.nn.Module) -> str | None:
    """:func:`module_role` of a live module."""
    return module_role(path, [cls.__name__ for cls in type(module).__mro__],
                       getattr(module, "is_cross_attention", None))


def scope_role(scopes: Sequence[str]) -> str | None:
    """The role of work run inside the role scopes ``scopes`` (outermost first): the outermost
    container role if there is one (a motion module's parts are temporal attention), else the
    innermost scope's role (a norm inside an attention block is a norm); None outside every scope."""
    for role in scopes:
        if role in CONTAINER_ROLES:
            return role
    return scopes[-1] if scopes else None


def kernel_role(name: str) -> str:
    """The role a kernel or operator name suggests, for work launched outside every role scope."""
    for role, pattern in _KERNEL_PATTERNS:
        if pattern.search(name):
            return role
    return OTHER


def scope_name(role: str, path: str) -> str:
    return f"{SCOPE_PREFIX}{role}:{path}"


def parse_scope(name: str) -> tuple[str, str] | None:
    """(role, module path) of a :func:`scope_name`, None for any other event name."""
    if not name.startswith(SCOPE_PREFIX):
        return None
    role, _, path = name[len(SCOPE_PREFIX):].partition(":")
    return (role, path) if role in ROLES else None


def outermost(named_roles: Iterable[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The ``(path, role)`` of modules that have a role and no ancestor with one (``named_roles``
    in ``named_modules`` order, parents first): the modules whose memory can be measured one at
    a time, since CUDA's peak statistic cannot be nested."""
    chosen: list[tuple[str, str]] = []
    for path, role in named_roles:
        if role is None or any(p == "" or path == p or path.startswith(p + ".") for p, _ in chosen):
            continue
        chosen.append((path, role))
    return chosen


class _Hooks:
    """Forward pre/post hooks on some modules, removed on exit."""

    def __init__(self):
        self.handles = []

    def add(self, module: torch.nn.Module, before, after) -> None:
        self.handles.append(module.register_forward_pre_hook(before))
        # always_call: a forward that raises still closes its range, so later ranges nest correctly
        self.handles.append(module.register_forward_hook(after, always_call=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class RoleScopes:
    """While active, every module of ``models`` with a role runs inside a ``record_function``
    range named :func:`scope_name` (role and module path), which the profiler records."""

    def __init__(self, models: Iterable[torch.nn.Module]):
        self.models = list(models)
        self._hooks = _Hooks()

    def __enter__(self) -> "RoleScopes":
        for model in self.models:
            for path, module in model.named_modules():
                role = role_of(path, module)
                if role is None:
                    continue
                open_ranges: list = []  # a module re-entered before it returns (rare) nests its ranges

                def before(_module, _args, name=scope_name(role, path), ranges=open_ranges):
                    ranges.append(torch.autograd.profiler.record_function(name).__enter__())

                def after(_module, _args, _output, ranges=open_ranges):
                    if ranges:
                        ranges.pop().__exit__(None, None, None)

                self._hooks.add(module, before, after)
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.remove()


class LoopMemory:
    """Peak CUDA memory of a denoising loop, and of each role's modules, beyond what was allocated
    before: the weights, the text embeddings and the latents are already resident when the loop
    starts, so they are in ``resident_bytes`` and not in the peaks.

    The loop starts at the first call of any of ``step_modules`` (the UNets): its pre-hook resets
    CUDA's peak statistic and notes what is allocated. With ``role_models``, the outermost modules
    with a role (:func:`outermost`) get hooks too: each call resets the statistic, and the peak
    above what was allocated at its entry is that call's transient memory (for attention: the
    gathered K/V copies, the permute copies, the attention output). The statistic cannot be
    nested, so the loop's own peak is kept as the running maximum of the statistic read before
    every reset. Reading and resetting it is host-side bookkeeping of the caching allocator, so
    no synchronisation is added; the hooks' Python does cost time, so time runs without them.
    """

    def __init__(self, step_modules: Iterable[torch.nn.Module], role_models: Iterable[torch.nn.Module] = ()):
        self.step_modules, self.role_models = list(step_modules), list(role_models)
        self.resident_bytes: int | None = None
        self.role_peak_bytes: dict[str, int] = {}
        self._running_peak = 0
        self._hooks = _Hooks()

    def _fold_peak(self) -> None:
        self._running_peak = max(self._running_peak, torch.cuda.max_memory_allocated())

    def __enter__(self) -> "LoopMemory":
        def loop_starts(_module, _args):
            if self.resident_bytes is None:
                torch.cuda.reset_peak_memory_stats()
                self.resident_bytes = torch.cuda.memory_allocated()
                self._running_peak = self.resident_bytes

        for module in self.step_modules:
            self._hooks.handles.append(module.register_forward_pre_hook(loop_starts))
        for model in self.role_models:
            for path, role in outermost((p, role_of(p, m)) for p, m in model.named_modules()):
                module = model.get_submodule(path)
                entry: list[int] = []

                def before(_module, _args, entry=entry):
                    self._fold_peak()
                    torch.cuda.reset_peak_memory_stats()
                    entry.append(torch.cuda.memory_allocated())

                def after(_module, _args, _output, role=role, entry=entry):
                    if not entry:
                        return
                    transient = torch.cuda.max_memory_allocated() - entry.pop()
                    self.role_peak_bytes[role] = max(self.role_peak_bytes.get(role, 0), transient)
                    self._fold_peak()

                self._hooks.add(module, before, after)
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.remove()
        self._fold_peak()

    @property
    def loop_peak_bytes(self) -> int | None:
        """Most memory allocated at any moment of the loop beyond ``resident_bytes`` (None: no loop ran)."""
        if self.resident_bytes is None:
            return None
        return max(self._running_peak - self.resident_bytes, 0)
