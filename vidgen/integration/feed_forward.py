"""diffusers' GEGLU feed-forward projection on vidgen's fused kernel (:func:`vidgen.ops.geglu`).

``GEGLU.forward`` is ``value, gate = proj(x).chunk(2, -1); value * gelu(gate)``: a Linear writing a
(..., 2 * inner) projection, then a second kernel reading it back for the GELU and the product.
:class:`GegluForward`, installed on one module instance, runs both in one kernel from the
module's own ``proj.weight`` and ``proj.bias`` (parameters and state dict untouched). A call it
cannot serve (a dtype the kernel does not take, weights in another dtype, autocast, a ``proj``
that is no longer a plain ``nn.Linear``, e.g. a LoRA layer loaded after patching) runs the
module's own forward and says why once.
"""
from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from torch import nn

from ..ops import _fallback
from ..ops.geglu import geglu, geglu_unsupported_reason
from .forwards import InstanceForward, install_forward, restore_forward

__all__ = ["GegluForward", "geglu_module_unsupported_reason", "patch_geglu", "unpatch_geglu"]


def geglu_module_unsupported_reason(module: nn.Module) -> str | None:
    """Why :class:`GegluForward` cannot reproduce ``module`` (None: it can)."""
    if not isinstance(module, GEGLU):
        return f"expected diffusers' GEGLU, got {type(module).__name__}"
    if type(module.proj) is not nn.Linear:
        return f"its projection is a {type(module.proj).__name__} (e.g. a LoRA layer), not a plain nn.Linear"
    return None


def _call_reason(module: GEGLU, hidden_states, args, kwargs) -> str | None:
    """Why this call runs diffusers' forward (None: the kernel serves it)."""
    if args or kwargs.get("scale") is not None:
        return "called with diffusers' deprecated scale argument"
    reason = geglu_module_unsupported_reason(module)
    if reason is not None:
        return reason
    weight = module.proj.weight
    if hidden_states.dtype != weight.dtype:
        return f"activations in {hidden_states.dtype}, projection weights in {weight.dtype}"
    device = hidden_states.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return "autocast is on (it picks the projection's precision per call)"
    return geglu_unsupported_reason(hidden_states.dtype)


class GegluForward(InstanceForward):
    """A GEGLU instance's forward on :func:`vidgen.ops.geglu` (see the module docstring)."""

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        module = self.module
        reason = _call_reason(module, hidden_states, args, kwargs)
        if reason is not None:
            _fallback.warn_once("GEGLU feed-forward", reason, "diffusers' module")
            return self.unfused(hidden_states, *args, **kwargs)
        return geglu(hidden_states, module.proj.weight, module.proj.bias)


def patch_geglu(module: nn.Module) -> nn.Module:
    """Install :class:`GegluForward` on ``module`` (a diffusers ``GEGLU``); idempotent; returns it."""
    return install_forward(module, GegluForward, geglu_module_unsupported_reason(module), (GEGLU,))


def unpatch_geglu(module: nn.Module) -> nn.Module:
    return restore_forward(module, GegluForward)
