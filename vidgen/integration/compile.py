"""Regional torch.compile of a patched denoiser: ``vidgen.patch(model, compile=True)``.

A UNet repeats a handful of block classes dozens of times; compiling each block instance (one
``torch.compile`` per module, like diffusers' ``compile_repeated_blocks``) instead of the whole
model keeps compile time to a few graphs (blocks of one class and shape share Dynamo's cache
entry) and leaves the model's own Python (the UNet's loop over blocks, its argument handling)
eager. Inside a block Inductor fuses what it can see: the pointwise chains, residual adds,
per-frame GroupNorms, the GEGLU activation; vidgen's ops (attention, the GroupNorm over frames)
are custom ops with fake implementations, opaque kernels in the compiled graph, never a graph
break.

The blocks compiled (:data:`REPEATED_BLOCKS`) are the outermost modules of those classes: a
motion module is compiled as a whole (its patched forward calls its transformer blocks
directly), a ResNet or transformer block inside it is not compiled again.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D, SpatioTemporalResBlock, TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import (TransformerSpatioTemporalModel,
                                                                TransformerTemporalModel)
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

__all__ = ["REPEATED_BLOCKS", "compile_repeated_blocks", "uncompile_blocks"]

# The repeated blocks of the denoisers vidgen patches (UNetMotionModel, UNet3DConditionModel,
# VideoUNet, UNetSpatioTemporalConditionModel and plain UNet2DConditionModel): ResNet blocks
# (VideoResnetBlock included; Stable Video Diffusion's spatial + temporal pair with its blender),
# spatial transformer blocks (VideoTransformerBlock included), motion modules (Stable Video
# Diffusion's spatio-temporal transformers with their copy-free forward) and UNet3D's temporal
# convolutions.
REPEATED_BLOCKS: tuple[type[nn.Module], ...] = (ResnetBlock2D, SpatioTemporalResBlock, BasicTransformerBlock,
                                                AnimateDiffTransformer3D, TransformerTemporalModel,
                                                TransformerSpatioTemporalModel, TemporalConvLayer)


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every outermost :data:`REPEATED_BLOCKS` instance in ``model``."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if isinstance(module, REPEATED_BLOCKS) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, module))
    return found


def compile_repeated_blocks(model: nn.Module, options: dict) -> list[nn.Module]:
    """``module.compile(**options)`` on each of :func:`repeated_blocks` ``(model)``; returns them
    (for :func:`uncompile_blocks`). ``options`` are :func:`torch.compile`'s keyword arguments."""
    blocks = [module for _, module in repeated_blocks(model)]
    for module in blocks:
        module.compile(**options)
    return blocks


def uncompile_blocks(blocks: list[nn.Module]) -> None:
    """Back to the eager forward (``nn.Module.compile`` only sets this instance attribute)."""
    for module in blocks:
        module.__dict__.pop("_compiled_call_impl", None)


def compile_options(compile: bool | dict) -> dict | None:
    """``patch``'s ``compile`` argument as torch.compile's keyword arguments (None: do not compile)."""
    if isinstance(compile, bool):
        return {} if compile else None
    if isinstance(compile, dict):
        unknown = set(compile) - set(torch.compile.__kwdefaults__ or {})
        if unknown:
            raise ValueError(f"compile: {', '.join(sorted(unknown))} is not a torch.compile argument; expected True, "
                             "False or a dict of torch.compile's keyword arguments (mode, backend, dynamic, ...)")
        return dict(compile)
    raise TypeError(f"compile: expected a bool or a dict of torch.compile's keyword arguments, got "
                    f"{type(compile).__name__}")
