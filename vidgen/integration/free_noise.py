"""FreeNoise's windowed temporal attention and split inference, on the image layout.

FreeNoise (diffusers' ``AnimateDiffFreeNoiseMixin.enable_free_noise``) makes long AnimateDiff
videos by swapping each motion-module block for a ``FreeNoiseTransformerBlock``: the block's
self-attentions run on windows of ``context_length`` frames, ``context_stride`` apart, and the
windows' outputs are blended per frame with the weights of a scheme (flat, pyramid, delayed
reverse sawtooth); the feed-forward then runs on the blend. Here every window is a frame-offset
view of the (B, F, N, C) video (:func:`~vidgen.integration.blocks.self_attentions_over_frames`
reads it in place), and the blend follows diffusers' block operation for operation: the same
windows, float32 weights, accumulation order, the partial last window and the division by the
per-frame weight sum.

``enable_free_noise_split_inference`` wraps each motion-module block (and ``proj_in``/``proj_out``)
in a ``SplitInferenceModule`` that runs it on groups of spatial positions to bound its memory.
Every computation of a block is per spatial position, so :func:`run_block` runs an unwrapped
block on bands of at most that many positions (per video batch), writing each band of the output
in place; ``proj_in``/``proj_out`` are plain matmuls whose output is whole anyway, so they are
unwrapped (:func:`unwrap_split`).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .blocks import block_over_frames, feed_forward, self_attentions_over_frames

__all__ = ["diffusers_fails_on", "free_noise_block_over_frames", "is_free_noise_block", "run_block", "split_size_of",
           "split_unsupported_reason", "unwrap_split"]


def _split_module_type() -> type:
    from diffusers.pipelines.free_noise_utils import SplitInferenceModule

    return SplitInferenceModule


def unwrap_split(module: nn.Module) -> nn.Module:
    """The module a ``SplitInferenceModule`` wraps (nested wrappers too), or ``module`` itself."""
    split = _split_module_type()
    while isinstance(module, split):
        module = module.module
    return module


def split_size_of(module: nn.Module) -> int | None:
    """How many positions (rows of diffusers' ``(B*h*w, F, C)`` layout) a ``SplitInferenceModule``
    runs at once (the smallest of nested wrappers), or None for a module that is not wrapped."""
    split, size = _split_module_type(), None
    while isinstance(module, split):
        size = module.split_size if size is None else min(size, module.split_size)
        module = module.module
    return size


def is_free_noise_block(block: nn.Module) -> bool:
    from diffusers.models.attention import FreeNoiseTransformerBlock

    return isinstance(block, FreeNoiseTransformerBlock)


def diffusers_fails_on(block: nn.Module, num_frames: int) -> bool:
    """Whether diffusers' own ``FreeNoiseTransformerBlock`` raises on a video of ``num_frames``: shorter
    than its window, or a weighting scheme that gives other than ``context_length`` weights
    (``delayed_reverse_sawtooth`` at an odd length) or none. Callers hand such calls to diffusers,
    so the user sees diffusers' own error."""
    if num_frames < block.context_length:
        return True
    try:
        return len(block._get_frame_weights(block.context_length, block.weighting_scheme)) != block.context_length
    except ValueError:
        return True


def split_unsupported_reason(module: nn.Module, where: str) -> str | None:
    """Why a (possibly) split-wrapped module cannot be run band by band, or None: every wrapper must
    split dim 0, the positions of diffusers' ``(B*h*w, F, C)`` layout (the pipeline's own choice);
    a split along frames or channels changes what diffusers computes."""
    split = _split_module_type()
    while isinstance(module, split):
        if module.split_dim != 0:
            return f"{where}: a SplitInferenceModule splitting dim {module.split_dim} (only dim 0, the positions, is served)"
        module = module.module
    return None


def _windows(block: nn.Module, num_frames: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """diffusers' windows over ``num_frames`` (the block's own ``_get_frame_indices``) and, when they
    stop short of the last frame, the extra window ending there, whose output counts only for the
    ``tail`` frames after the others (0: no extra window)."""
    windows = [tuple(window) for window in block._get_frame_indices(num_frames)]
    tail = 0
    if windows[-1][1] != num_frames:
        tail = num_frames - windows[-1][1]
        windows.append((num_frames - block.context_length, num_frames))
    return tuple(windows), tail


@functools.lru_cache(maxsize=64)
def _blend_weights(windows: tuple[tuple[int, int], ...], tail: int, num_frames: int, weights: tuple[float, ...],
                   dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(window weights (1, L, 1, 1), per-frame weight sums (1, F, 1, 1)) as ``FreeNoiseTransformerBlock``
    forms them: the scheme's values rounded to the activations' dtype, then held in float32, summed
    in float32 window by window. Cached on the device, so that a call (and a CUDA-graph capture)
    copies nothing from the host."""
    window_weights = torch.tensor(weights, dtype=dtype).float()  # (L,)
    sums = torch.zeros(num_frames)
    for i, (start, end) in enumerate(windows):
        if tail and i == len(windows) - 1:
            sums[-tail:] += window_weights[-tail]  # diffusers adds the weight at window position L - tail
        else:
            sums[start:end] += window_weights
    return window_weights.view(1, -1, 1, 1).to(device), sums.view(1, -1, 1, 1).to(device)


def free_noise_block_over_frames(block: nn.Module, video: torch.Tensor, *, identity_videos: tuple[int, int] = (0, 0),
                                 residual_adds: bool = False) -> torch.Tensor:
    """``FreeNoiseTransformerBlock.forward`` on a (B, F, N, C) video view; returns a new (B, F, N, C).
    ``residual_adds``: see :func:`~vidgen.integration.blocks.self_attentions_over_frames`.

    Callers hand the calls :func:`diffusers_fails_on` to diffusers' block instead.
    """
    num_frames = video.shape[1]
    windows, tail = _windows(block, num_frames)
    scheme_weights = tuple(block._get_frame_weights(block.context_length, block.weighting_scheme))
    weights, sums = _blend_weights(windows, tail, num_frames, scheme_weights, video.dtype, video.device)
    blended = torch.zeros_like(video)
    for i, (start, end) in enumerate(windows):
        out = self_attentions_over_frames(block, video[:, start:end], identity_videos=identity_videos,
                                          residual_adds=residual_adds)
        if tail and i == len(windows) - 1:
            blended[:, -tail:] += out[:, -tail:] * weights[:, -tail:]
        else:
            blended[:, start:end] += out * weights
    blended = torch.where(sums > 0, blended / sums, blended).to(video.dtype)  # a frame no window covers stays 0
    return feed_forward(block, blended, residual_adds=residual_adds)


def run_block(block: nn.Module, video: torch.Tensor, *, identity_videos: tuple[int, int] = (0, 0),
              residual_adds: bool = False) -> torch.Tensor:
    """One motion-module block, as it stands now, on a (B, F, N, C) video view: a plain block, a
    FreeNoise block, either wrapped for split inference (run on bands of spatial positions).
    ``residual_adds``: see :func:`~vidgen.integration.blocks.self_attentions_over_frames`."""
    inner = unwrap_split(block)
    forward = free_noise_block_over_frames if is_free_noise_block(inner) else block_over_frames
    split = split_size_of(block)
    videos, _, positions, _ = video.shape
    band = max(1, split // videos) if split is not None else positions
    if band >= positions:
        return forward(inner, video, identity_videos=identity_videos, residual_adds=residual_adds)
    out = torch.empty_like(video)
    for start in range(0, positions, band):
        out[:, :, start:start + band] = forward(inner, video[:, :, start:start + band], identity_videos=identity_videos,
                                                residual_adds=residual_adds)
    return out
