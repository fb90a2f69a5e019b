"""Instance-level forwards: how vidgen gives one module a fused forward and takes it back.

A fused forward (an AnimateDiff motion module's, Latte's) is an object installed as the
instance's ``forward``: the class and every other instance keep diffusers' forward; parameters,
buffers and the state dict are untouched. It keeps the instance-level forward it replaced (a
diffusers hook's, if any), which :meth:`InstanceForward.unfused` calls for calls it does not serve
and :func:`restore_forward` puts back.
"""
from __future__ import annotations

from torch import nn

__all__ = ["InstanceForward", "install_forward", "restore_forward"]


class InstanceForward:
    """Base of vidgen's fused forwards: ``module`` and :meth:`unfused`, the module's own computation."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.original_forward = module.__dict__.get("forward")  # an instance-level forward, if any

    def unfused(self, *args, **kwargs):
        if self.original_forward is not None:
            return self.original_forward(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)


def install_forward(module: nn.Module, fused_type: type[InstanceForward], reason: str | None,
                    served_types: tuple[type, ...], argument: str = "module") -> nn.Module:
    """Install ``fused_type(module)`` as ``module``'s forward (idempotent) and return ``module``.

    ``reason`` is why the fused forward cannot reproduce this module (None: it can): ``TypeError``
    naming ``argument`` for a module not of ``served_types``, ``ValueError`` (naming the part) otherwise.
    """
    if isinstance(module.__dict__.get("forward"), fused_type):
        return module
    if reason is not None:
        if not isinstance(module, served_types):
            raise TypeError(f"{argument}: {reason}")
        raise ValueError(reason)
    module.forward = fused_type(module)
    return module


def restore_forward(module: nn.Module, fused_type: type[InstanceForward]) -> nn.Module:
    """Give ``module`` back the forward it had before :func:`install_forward` (no-op if not installed)."""
    fused = module.__dict__.get("forward")
    if isinstance(fused, fused_type):
        del module.forward
        if fused.original_forward is not None:
            module.forward = fused.original_forward
    return module
