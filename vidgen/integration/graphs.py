"""A denoiser's forward replayed from CUDA graphs: ``vidgen.patch(pipe, cuda_graph=True)``.

A denoising step of a video UNet is hundreds of small launches; at sampler sizes the GPU waits on
Python for a good part of it. Here the UNet's forward is captured once per call signature (the
shapes, dtypes, devices and strides of its tensor arguments and the values of the others) and
every later call with that signature copies its tensors into the graph's static inputs, replays
the graph, and returns a copy of the static outputs: the same kernels on the same operands, so
the same values as eager, bit for bit, with one launch instead of hundreds.

What a graph cannot reproduce runs the module's own forward instead, said once per reason
(:class:`~vidgen.FallbackWarning`): tensors off CUDA, autograd recording (training), a
module in training mode with active dropout, a call inside torch.compile or inside another capture,
an argument that cannot be part of a key (an unhashable non-tensor), more signatures than
:data:`MAX_GRAPHS`. Capture itself needs a forward that never reads a device value on the host;
vidgen's ops and schedulers are written that way (tests/test_sampling.py holds them to it), and
a forward that does read one fails its capture: the error is reported once and that signature
stays eager.

Graphs of one module share one memory pool, so the graphs of a pipeline's few signatures (e.g.
with and without classifier-free guidance) cost one set of activations, not one each.

A graph replays the module as it was when captured: new weights copied into the same parameters
are seen, but a changed structure is not (a LoRA loaded or fused afterwards, new attention
processors, another adapter scale). After such a change, ``vidgen.unpatch`` and patch again.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.utils._pytree as pytree

from ..ops._fallback import warn_once

# Signatures one module may keep graphs for before further ones run eagerly: each graph keeps
# its static inputs and outputs alive (the activations live in the shared pool).
MAX_GRAPHS = 8


class CudaGraphs:
    """How graphs are made and replayed: ``torch.cuda.CUDAGraph``, for the patched denoiser's forward
    and for the samplers' captured step (``vidgen.sampling``). Tests swap in a recorder with the
    same methods to check the bookkeeping around it on the CPU."""

    def unsupported_reason(self, tensors: list[torch.Tensor]) -> str | None:
        """Why these call arguments cannot be replayed from a graph on this backend, or None."""
        if not tensors or any(t.device.type != "cuda" for t in tensors):
            return "its inputs are not CUDA tensors"
        if torch.cuda.is_current_stream_capturing():
            return "it is called inside another CUDA-graph capture"
        return None

    def pool(self):
        return torch.cuda.graph_pool_handle()

    def warm_up(self, run: Callable[[], object], device: torch.device) -> None:
        """One eager run on a side stream before capture: lazy tables, autotuning and allocator
        growth happen here, never inside the capture."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)

    def capture(self, run: Callable[[], object], pool=None) -> tuple[Callable[[], None], object]:
        """(replay, outputs): ``run`` captured once (into memory ``pool``, a fresh one if None);
        ``replay()`` reruns it into ``outputs``."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = run()
        return graph.replay, outputs


@dataclasses.dataclass
class _Captured:
    static_inputs: list[torch.Tensor]  # the graph reads its tensor arguments from these
    replay: Callable[[], None]
    outputs: object                    # the graph writes its results here (a pytree of tensors)


def _tensor_key(t: torch.Tensor) -> tuple:
    return ("tensor", tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


class GraphedForward:
    """The ``forward`` of one module instance, replayed from CUDA graphs (see the module docstring).

    Installed as the instance's ``forward`` by :func:`graph_forward`; ``original`` is the forward it
    stands in for (called for everything a graph cannot serve).
    """

    def __init__(self, module: torch.nn.Module, original: Callable, graphs: CudaGraphs | None = None,
                 previous: Callable | None = None):
        self.module = module
        self.original = original
        self.previous = previous  # the instance-level forward it replaced, if any (restored by ungraph_forward)
        # Looked up once: a pipeline leaves its UNet in training mode, and walking thousands of
        # modules on every call would cost the host time the graph saves.
        self._dropouts = [m for m in module.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        self.graphs = graphs or CudaGraphs()
        self.captured: dict[tuple, _Captured | None] = {}  # None: that signature failed to capture
        self._pool = None

    def unsupported_reason(self, tensors: list[torch.Tensor]) -> str | None:
        """Why this call cannot be replayed from a graph, or None."""
        if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in self.module.parameters())):
            return "autograd is recording (a graph replays inference only)"
        if self.module.training and any(m.training and m.p > 0 for m in self._dropouts):
            return "it is in training mode with active dropout (a replay would repeat the captured draws)"
        if torch.compiler.is_compiling():
            return "it is being traced by torch.compile"
        return self.graphs.unsupported_reason(tensors)

    def __call__(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        reason = self.unsupported_reason(tensors)
        key = None
        if reason is None:
            try:
                key = (spec, tuple(_tensor_key(x) if isinstance(x, torch.Tensor) else x for x in leaves))
                hash(key)
            except TypeError:
                reason = "an argument is neither a tensor nor hashable, so it cannot key a graph"
        if reason is None and key not in self.captured and len(self.captured) >= MAX_GRAPHS:
            reason = f"it already holds graphs for {MAX_GRAPHS} call signatures"
        if reason is not None:
            warn_once(f"{type(self.module).__name__} CUDA graph", reason, "its eager forward")
            return self.original(*args, **kwargs)
        if key not in self.captured:
            self.captured[key] = self._capture(leaves, spec, tensors[0].device)
        entry = self.captured[key]
        if entry is None:
            return self.original(*args, **kwargs)
        for static, value in zip(entry.static_inputs, tensors):
            static.copy_(value)
        entry.replay()
        # The static outputs are overwritten by the next replay: the caller gets its own copy.
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, entry.outputs)

    def _capture(self, leaves: list, spec, device: torch.device) -> _Captured | None:
        static_leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        static_inputs = [leaf for leaf in static_leaves if isinstance(leaf, torch.Tensor)]

        def run():
            args, kwargs = pytree.tree_unflatten(static_leaves, spec)
            return self.original(*args, **kwargs)

        try:
            self.graphs.warm_up(run, device)
            if self._pool is None:
                self._pool = self.graphs.pool()
            replay, outputs = self.graphs.capture(run, self._pool)
        except Exception as exc:  # noqa: BLE001  (a forward that syncs with the host cannot be captured)
            warn_once(f"{type(self.module).__name__} CUDA graph",
                      f"capture failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})",
                      "its eager forward for this call signature")
            return None
        return _Captured(static_inputs, replay, outputs)


def graph_forward(module: torch.nn.Module, graphs: CudaGraphs | None = None) -> GraphedForward:
    """Replace ``module``'s forward (this instance only) by a :class:`GraphedForward`; idempotent.
    :func:`ungraph_forward` restores the forward it had."""
    current = module.__dict__.get("forward")
    if isinstance(current, GraphedForward):
        return current
    graphed = GraphedForward(module, current if current is not None else module.forward, graphs, previous=current)
    module.forward = graphed
    return graphed


def ungraph_forward(module: torch.nn.Module) -> None:
    graphed = module.__dict__.get("forward")
    if isinstance(graphed, GraphedForward):
        del module.forward
        if graphed.previous is not None:
            module.forward = graphed.previous
