"""GroupNorm over frames (METHODS.md sections 2 and 6), optionally followed by SiLU, forward and backward.

``x`` holds a batch of videos in the image layout, ``(B*F, C, h, w)`` with the frame fastest; the
norm is ``nn.GroupNorm`` applied to each video as the 5-D ``(B, C, F, h, w)`` tensor (AnimateDiff's
motion modules, Tune-A-Video's ResNet blocks): a group's statistics span its C/G channels, every
pixel and every frame of one video. With ``silu`` the SiLU that follows in a ResNet block is
applied before the one store, so the normalised tensor is never written.

Two passes, with the statistics between them in a tensor of their own:

1. statistics: one program per (frame, group), ``B*F*G`` of them, reads its frame's slice of the
   group (C/G channels x h*w pixels, contiguous in the image layout) once and writes
   ``(count, sum, sum of squares)`` in fp32: ``statistics`` (B, F, G, 3).
2. apply: one program per (frame, group) adds up the partial sums of its video, ``statistics[b, :, g]``
   (any number S of partials: F from pass 1, or fewer once a caller has added some up), and
   writes ``silu?((x - mean) * rstd * weight + bias)`` in the input dtype, reading x once more.

The sums are plain sums so that anything holding partials of the same videos can add them:
frame-parallel sampling, where each rank holds some of a video's frames, all-reduces
``statistics.sum(1, keepdim=True)`` between the passes and hands the result to pass 2. Sums of
squares in fp32 lose about ``2**-24 * E[x^2] / Var[x]`` of the variance to cancellation, far below
fp16/bf16 output rounding for the activations of a UNet (where |mean| is within a few standard
deviations).

The backward has the same shape: a pass that recomputes ``x_hat`` and the SiLU's derivative and
writes per-(frame, group) sums of ``g = dy' * weight`` and ``g * x_hat`` (plus per-(frame,
channel) partials of the weight and bias gradients), and a pass that adds a video's sums and
writes ``dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))``.

All arithmetic is fp32; weight and bias are read in their own dtype (the input's or fp32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._aot import KernelSpec
from ._launch import ARCHS

STATISTICS = 3  # (count, sum, sum of squares) per (video or frame, group)
GRADIENT_SUMS = 2  # (sum of g, sum of g * x_hat) per (frame, group)


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle): fp32 math, float64 for float64 inputs.
# ----------------------------------------------------------------------------------------------
def _math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _grouped(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    """(B*F, C, h, w) -> (B, F, G, C/G, h*w) view."""
    batch_frames, channels = x.shape[:2]
    return x.reshape(batch_frames // num_frames, num_frames, num_groups, channels // num_groups, -1)


def frame_group_norm_statistics_reference(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    """Pass 1: ``(count, sum, sum of squares)`` of every (video, frame, group), (B, F, G, 3)."""
    grouped = _grouped(x, num_frames, num_groups).to(_math_dtype(x))
    count = torch.full(grouped.shape[:3], grouped[0, 0, 0].numel(), dtype=grouped.dtype, device=x.device)
    return torch.stack([count, grouped.sum((3, 4)), grouped.square().sum((3, 4))], dim=-1)


def _moments(statistics: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, rstd, count) per (video, group) from partial sums (B, S, G, 3), each (B, 1, G, 1, 1)."""
    count, total, squares = statistics.sum(1, keepdim=True).unbind(-1)
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    return (mean[..., None, None], torch.rsqrt(var + eps)[..., None, None], count[..., None, None])


def _affine(weight: torch.Tensor, bias: torch.Tensor, num_groups: int, dtype: torch.dtype):
    """weight, bias (C,) as (G, C/G, 1) in ``dtype``."""
    return (weight.to(dtype).view(num_groups, -1, 1), bias.to(dtype).view(num_groups, -1, 1))


def frame_group_norm_apply_reference(x: torch.Tensor, statistics: torch.Tensor, num_frames: int,
                                     weight: torch.Tensor, bias: torch.Tensor, eps: float,
                                     silu: bool = False) -> torch.Tensor:
    """Pass 2: the normalised (and SiLU'd) ``x`` from partial sums ``statistics`` (B, S, G, 3)."""
    num_groups = statistics.shape[2]
    math = _math_dtype(x)
    mean, rstd, _ = _moments(statistics.to(math), eps)
    w, b = _affine(weight, bias, num_groups, math)
    y = (_grouped(x, num_frames, num_groups).to(math) - mean) * rstd * w + b
    if silu:
        y = torch.nn.functional.silu(y)
    return y.to(x.dtype).view(x.shape)


def frame_group_norm_reference(x: torch.Tensor, num_frames: int, num_groups: int, weight: torch.Tensor,
                               bias: torch.Tensor, eps: float, silu: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, statistics): both passes (see the module docstring)."""
    statistics = frame_group_norm_statistics_reference(x, num_frames, num_groups)
    return frame_group_norm_apply_reference(x, statistics, num_frames, weight, bias, eps, silu), statistics


def frame_group_norm_backward_reference(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                        statistics: torch.Tensor, num_frames: int, eps: float, silu: bool = False
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of :func:`frame_group_norm_reference` from its ``statistics``."""
    num_groups = statistics.shape[2]
    math = _math_dtype(x)
    mean, rstd, count = _moments(statistics.to(math), eps)
    w, b = _affine(weight, bias, num_groups, math)
    x_hat = (_grouped(x, num_frames, num_groups).to(math) - mean) * rstd     # (B, F, G, C/G, h*w)
    dz = _grouped(dy, num_frames, num_groups).to(math)
    if silu:
        z = x_hat * w + b
        gate = torch.sigmoid(z)
        dz = dz * gate * (1 + z * (1 - gate))
    g = dz * w
    mean_g = g.sum((1, 3, 4), keepdim=True) / count
    mean_gx = (g * x_hat).sum((1, 3, 4), keepdim=True) / count
    dx = rstd * (g - mean_g - x_hat * mean_gx)
    dweight = (dz * x_hat).sum((0, 1, 4)).reshape(-1)
    dbias = dz.sum((0, 1, 4)).reshape(-1)
    return dx.to(x.dtype).view(x.shape), dweight.to(weight.dtype), dbias.to(bias.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels. ``X``, ``DY``, ``Out``, ``DX`` are (B*F, C, h*w) contiguous: frame n's group g is
# the contiguous run of C/G * h*w elements starting at ``(n * G + g) * group_size``. One program
# per (frame, group): ``pid = n * G + g``.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _group_moments(Stats, video, group, num_groups, num_partials, eps):
    """(mean, rstd, count) of one (video, group) from the sum of its ``num_partials`` partials
    ``Stats[video, s, group]`` of (count, sum, sum of squares)."""
    count = 0.0
    total = 0.0
    squares = 0.0
    for s in range(0, num_partials):
        partial = Stats + ((video * num_partials + s) * num_groups + group) * 3
        count += tl.load(partial)
        total += tl.load(partial + 1)
        squares += tl.load(partial + 2)
    mean = total / count
    var = tl.maximum(squares / count - mean * mean, 0.0)
    return mean, tl.rsqrt(var + eps), count


@triton.jit
def _channels(group, group_channels, c0, BLOCK_C: tl.constexpr):
    """Global indices and mask of the channels of ``group`` in the block starting at ``c0``."""
    in_group = c0 + tl.arange(0, BLOCK_C)
    return group * group_channels + in_group, in_group < group_channels


@triton.jit
def _load_affine(Weight, Bias, group, group_channels, c0, BLOCK_C: tl.constexpr):
    """Weight and bias, in fp32, of the channels of ``group`` in the block starting at ``c0``."""
    channels, channel_ok = _channels(group, group_channels, c0, BLOCK_C)
    weight = tl.load(Weight + channels, mask=channel_ok, other=0.0).to(tl.float32)
    bias = tl.load(Bias + channels, mask=channel_ok, other=0.0).to(tl.float32)
    return weight, bias


@triton.jit
def _tile(group_channels, hw, c0, h0, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Element offsets (from the frame's group start) and mask of one (BLOCK_C, BLOCK_HW) tile."""
    channels = c0 + tl.arange(0, BLOCK_C)
    pixels = h0 + tl.arange(0, BLOCK_HW)
    offsets = channels[:, None] * hw + pixels[None, :]
    mask = (channels < group_channels)[:, None] & (pixels < hw)[None, :]
    return offsets, mask


@triton.jit
def _frame_group_norm_statistics_kernel(
    X,             # (B*F, C, h*w) contiguous
    Stats,         # (B*F, G, 3) fp32 contiguous, written: count, sum, sum of squares of each frame's group
    group_size,    # C/G * h*w: elements of one frame's group
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    start = X + pid * group_size
    total = tl.zeros([BLOCK], tl.float32)
    squares = tl.zeros([BLOCK], tl.float32)
    for offset in range(0, group_size, BLOCK):
        offsets = offset + tl.arange(0, BLOCK)
        x = tl.load(start + offsets, mask=offsets < group_size, other=0.0).to(tl.float32)
        total += x
        squares += x * x
    tl.store(Stats + pid * 3, tl.zeros([], tl.float32) + group_size)
    tl.store(Stats + pid * 3 + 1, tl.sum(total, axis=0))
    tl.store(Stats + pid * 3 + 2, tl.sum(squares, axis=0))


@triton.jit
def _frame_group_norm_apply_kernel(
    X,             # (B*F, C, h*w) contiguous
    Weight, Bias,  # (C,) in X's dtype or fp32
    Stats,         # (B, S, G, 3) fp32 contiguous: partial (count, sum, sum of squares), summed over S here
    Out,           # (B*F, C, h*w) contiguous, written
    num_frames, num_groups, group_channels, hw, num_partials,
    eps,           # fp32
    silu,          # 0 or 1: apply SiLU to the normalised value before the store
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    group = pid % num_groups
    video = pid // num_groups // num_frames
    mean, rstd, _count = _group_moments(Stats, video, group, num_groups, num_partials, eps)
    start = pid * group_channels * hw
    for c0 in range(0, group_channels, BLOCK_C):
        weight, bias = _load_affine(Weight, Bias, group, group_channels, c0, BLOCK_C)
        scale = weight * rstd
        shift = bias - mean * scale
        for h0 in range(0, hw, BLOCK_HW):
            offsets, mask = _tile(group_channels, hw, c0, h0, BLOCK_C, BLOCK_HW)
            x = tl.load(X + start + offsets, mask=mask, other=0.0).to(tl.float32)
            y = x * scale[:, None] + shift[:, None]
            if silu:
                y = y * tl.sigmoid(y)
            tl.store(Out + start + offsets, y.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _recompute(X, DY, start, offsets, mask, mean, rstd, weight, bias, silu):
    """x_hat and dz = dL/d(x_hat * weight + bias) of one tile (through the SiLU when it is on)."""
    x_hat = (tl.load(X + start + offsets, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
    dz = tl.load(DY + start + offsets, mask=mask, other=0.0).to(tl.float32)
    if silu:
        z = x_hat * weight[:, None] + bias[:, None]
        gate = tl.sigmoid(z)
        dz = dz * gate * (1.0 + z * (1.0 - gate))
    return x_hat, dz


@triton.jit
def _frame_group_norm_backward_statistics_kernel(
    X, DY,         # (B*F, C, h*w) contiguous: the forward's input and the output's gradient
    Weight, Bias,  # (C,) in X's dtype or fp32
    Stats,         # (B, S, G, 3) fp32 contiguous: the forward's statistics
    GradSums,      # (B*F, G, 2) fp32 contiguous, written: sum of g = dz * weight, and of g * x_hat
    DWeight, DBias,  # (B*F, C) fp32 contiguous, written: each frame's sum of dz * x_hat and of dz per channel
    num_frames, num_groups, group_channels, hw, num_partials,
    eps,           # fp32
    silu,          # 0 or 1, as in the forward
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    group = pid % num_groups
    frame = pid // num_groups
    mean, rstd, _count = _group_moments(Stats, frame // num_frames, group, num_groups, num_partials, eps)
    start = pid * group_channels * hw
    sum_g = 0.0
    sum_gx = 0.0
    for c0 in range(0, group_channels, BLOCK_C):
        channels, channel_ok = _channels(group, group_channels, c0, BLOCK_C)
        weight, bias = _load_affine(Weight, Bias, group, group_channels, c0, BLOCK_C)
        dz_x = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
        dz_sum = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
        for h0 in range(0, hw, BLOCK_HW):
            offsets, mask = _tile(group_channels, hw, c0, h0, BLOCK_C, BLOCK_HW)
            x_hat, dz = _recompute(X, DY, start, offsets, mask, mean, rstd, weight, bias, silu)
            dz_x += dz * x_hat  # dz is 0 off the tile's mask (dy loads 0)
            dz_sum += dz
        per_channel_x = tl.sum(dz_x, axis=1)
        per_channel = tl.sum(dz_sum, axis=1)
        row = frame * num_groups * group_channels
        tl.store(DWeight + row + channels, per_channel_x, mask=channel_ok)
        tl.store(DBias + row + channels, per_channel, mask=channel_ok)
        sum_g += tl.sum(per_channel * weight, axis=0)
        sum_gx += tl.sum(per_channel_x * weight, axis=0)
    tl.store(GradSums + pid * 2, sum_g)
    tl.store(GradSums + pid * 2 + 1, sum_gx)


@triton.jit
def _frame_group_norm_backward_apply_kernel(
    X, DY,         # (B*F, C, h*w) contiguous
    Weight, Bias,  # (C,) in X's dtype or fp32
    Stats,         # (B, S, G, 3) fp32 contiguous: the forward's statistics
    GradSums,      # (B*F, G, 2) fp32 contiguous: the backward statistics pass's sums, summed over F here
    DX,            # (B*F, C, h*w) contiguous, written
    num_frames, num_groups, group_channels, hw, num_partials,
    eps,           # fp32
    silu,          # 0 or 1, as in the forward
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    group = pid % num_groups
    video = pid // num_groups // num_frames
    mean, rstd, count = _group_moments(Stats, video, group, num_groups, num_partials, eps)
    sum_g = 0.0
    sum_gx = 0.0
    for f in range(0, num_frames):
        sums = GradSums + ((video * num_frames + f) * num_groups + group) * 2
        sum_g += tl.load(sums)
        sum_gx += tl.load(sums + 1)
    mean_g = sum_g / count
    mean_gx = sum_gx / count
    start = pid * group_channels * hw
    for c0 in range(0, group_channels, BLOCK_C):
        weight, bias = _load_affine(Weight, Bias, group, group_channels, c0, BLOCK_C)
        for h0 in range(0, hw, BLOCK_HW):
            offsets, mask = _tile(group_channels, hw, c0, h0, BLOCK_C, BLOCK_HW)
            x_hat, dz = _recompute(X, DY, start, offsets, mask, mean, rstd, weight, bias, silu)
            dx = rstd * (dz * weight[:, None] - mean_g - x_hat * mean_gx)
            tl.store(DX + start + offsets, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launch configs
# ----------------------------------------------------------------------------------------------
# Statistics: a flat loop over a frame's group, 8 fp32 accumulators per thread of 4 warps (16-byte
# loads of fp16/bf16). Apply and backward: (BLOCK_C, BLOCK_HW) tiles of 2048 elements, wide along
# the pixels of large maps, tall along the channels of small ones (the 8x8 and 16x16 levels).
STATISTICS_BLOCK, STATISTICS_WARPS = 2048, 4
TILES = {"wide": (4, 512), "tall": (32, 64)}  # name -> (BLOCK_C, BLOCK_HW)
TILE_WARPS = 4
WIDE_FROM_HW = 512  # maps of at least this many pixels take the wide tile


def tile_for(hw: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW) of the apply and backward kernels for maps of ``hw`` pixels."""
    return TILES["wide" if hw >= WIDE_FROM_HW else "tall"]


def _shape(x: torch.Tensor, num_groups: int) -> tuple[int, int, int]:
    """(B*F, group channels, pixels) of a (B*F, C, h, w) input."""
    return x.shape[0], x.shape[1] // num_groups, x[0, 0].numel()


def _launch_statistics(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    batch_frames, group_channels, hw = _shape(x, num_groups)
    stats = torch.empty((batch_frames, num_groups, STATISTICS), dtype=torch.float32, device=x.device)
    _frame_group_norm_statistics_kernel[(batch_frames * num_groups,)](
        x, stats, group_channels * hw, BLOCK=STATISTICS_BLOCK, num_warps=STATISTICS_WARPS)
    return stats


# ----------------------------------------------------------------------------------------------
# Launchers. ``x`` (and ``dy``) must be contiguous, ``weight`` and ``bias`` (C,) tensors in x's dtype
# or fp32, ``statistics`` (B, S, G, 3) fp32 contiguous (the public op sees to it).
# ----------------------------------------------------------------------------------------------
def frame_group_norm_statistics_triton(x: torch.Tensor, num_frames: int, num_groups: int) -> torch.Tensor:
    """Pass 1: (B, F, G, 3) fp32 partial sums, one per (video, frame, group)."""
    return _launch_statistics(x, num_groups).view(x.shape[0] // num_frames, num_frames, num_groups, STATISTICS)


def frame_group_norm_apply_triton(x, statistics, num_frames: int, weight, bias, eps: float, silu: bool) -> torch.Tensor:
    """Pass 2: the normalised (and SiLU'd) x, contiguous, in x's dtype."""
    num_groups, num_partials = statistics.shape[2], statistics.shape[1]
    batch_frames, group_channels, hw = _shape(x, num_groups)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    block_c, block_hw = tile_for(hw)
    _frame_group_norm_apply_kernel[(batch_frames * num_groups,)](
        x, weight, bias, statistics, out, num_frames, num_groups, group_channels, hw, num_partials, eps, int(silu),
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=TILE_WARPS)
    return out


def frame_group_norm_forward_triton(x, num_frames: int, num_groups: int, weight, bias, eps: float, silu: bool
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, statistics (B, F, G, 3)): both passes."""
    statistics = frame_group_norm_statistics_triton(x, num_frames, num_groups)
    return frame_group_norm_apply_triton(x, statistics, num_frames, weight, bias, eps, silu), statistics


def frame_group_norm_backward_triton(dy, x, weight, bias, statistics, num_frames: int, eps: float, silu: bool
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias): dx in x's dtype, the parameter gradients in their parameters' dtype."""
    num_groups, num_partials = statistics.shape[2], statistics.shape[1]
    batch_frames, group_channels, hw = _shape(x, num_groups)
    channels = num_groups * group_channels
    grad_sums = torch.empty((batch_frames, num_groups, GRADIENT_SUMS), dtype=torch.float32, device=x.device)
    dweight = torch.empty((batch_frames, channels), dtype=torch.float32, device=x.device)
    dbias = torch.empty_like(dweight)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    block_c, block_hw = tile_for(hw)
    sizes = (num_frames, num_groups, group_channels, hw, num_partials, eps, int(silu))
    grid = (batch_frames * num_groups,)
    _frame_group_norm_backward_statistics_kernel[grid](
        x, dy, weight, bias, statistics, grad_sums, dweight, dbias, *sizes,
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=TILE_WARPS)
    _frame_group_norm_backward_apply_kernel[grid](
        x, dy, weight, bias, statistics, grad_sums, dx, *sizes,
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=TILE_WARPS)
    return dx, dweight.sum(0).to(weight.dtype), dbias.sum(0).to(bias.dtype)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time specs: every (kernel, input dtype, parameter dtype, tile) the launchers can pick.
# ----------------------------------------------------------------------------------------------
_SIZES = ("num_frames", "num_groups", "group_channels", "hw", "num_partials")


def _parameter_dtypes(dtype: str) -> tuple[str, ...]:
    """Weight and bias come in the input's dtype (a model cast to fp16/bf16) or fp32 (mixed precision)."""
    return (dtype,) if dtype == "fp32" else (dtype, "fp32")


def aot_specs() -> list[KernelSpec]:
    specs = []
    for dtype in ("fp32", "fp16", "bf16"):
        specs.append(KernelSpec(
            module=__name__, kernel="_frame_group_norm_statistics_kernel",
            signature={"X": f"*{dtype}", "Stats": "*fp32", "group_size": "i32", "BLOCK": "constexpr"},
            constexprs={"BLOCK": STATISTICS_BLOCK}, num_warps=STATISTICS_WARPS, num_stages=1))
        for parameters in _parameter_dtypes(dtype):
            for block_c, block_hw in TILES.values():
                tile = {"BLOCK_C": block_c, "BLOCK_HW": block_hw}
                scalars = {**{name: "i32" for name in _SIZES}, "eps": "fp32", "silu": "i32",
                           "BLOCK_C": "constexpr", "BLOCK_HW": "constexpr"}
                weights = {"Weight": f"*{parameters}", "Bias": f"*{parameters}"}
                for kernel, pointers in (
                        ("_frame_group_norm_apply_kernel",
                         {"X": f"*{dtype}", **weights, "Stats": "*fp32", "Out": f"*{dtype}"}),
                        ("_frame_group_norm_backward_statistics_kernel",
                         {"X": f"*{dtype}", "DY": f"*{dtype}", **weights, "Stats": "*fp32", "GradSums": "*fp32",
                          "DWeight": "*fp32", "DBias": "*fp32"}),
                        ("_frame_group_norm_backward_apply_kernel",
                         {"X": f"*{dtype}", "DY": f"*{dtype}", **weights, "Stats": "*fp32", "GradSums": "*fp32",
                          "DX": f"*{dtype}"})):
                    specs.append(KernelSpec(module=__name__, kernel=kernel, signature={**pointers, **scalars},
                                            constexprs=tile, num_warps=TILE_WARPS, num_stages=1, archs=ARCHS))
    return specs

