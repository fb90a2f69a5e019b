"""Correlated video noise (PYoCo, arXiv 2305.10474; METHODS.md section 3), generated in-kernel.

The output is viewed as (B, PRE, F, POST): B videos (dim 0), the frame axis F at
``frame_dim``, PRE/POST the flattened dims before/after it. Frames are correlated at each
(video, PRE, POST) "column"; every column is independent. One program owns BLOCK columns of
one video and walks its F frames in registers, so each output element is written exactly
once and nothing else touches memory (``add_noise`` also reads x0 once and writes x_t).

Random numbers: Philox keyed by the seed. Normals come four per Philox call
(``tl.randn4x``): counter ``g * cols + col`` gives frames 4g..4g+3 of column ``col``, and the
draw of index F (in group F // 4) is the shared one of ``mixed``. With one seed per video the
counters start at 0 for every video, so a video's noise depends on its own seed and shape
only; with one seed for the batch, video b's counters start at ``b * groups * cols``.

That stream is written once, in the ``@triton.jit`` helpers below (:func:`philox_origin`,
:func:`frame_normals`, :func:`shared_normal`, :func:`correlate`): the guidance step's in-kernel
noise (:mod:`vidgen.kernels.guidance`) calls them too, so both kernels draw the same numbers.
The CUDA library's copy (``csrc/guided_step.cu``) is pinned to them by ``tests/test_cuda_library.py``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._aot import PHILOX_NORMALS_NOTE, PHILOX_NORMALS_STACK, KernelSpec
from ._launch import cdiv

KINDS = ("iid", "mixed", "progressive")
_BLOCK, _NUM_WARPS = 1024, 4
_INT32_LIMIT = 2**31


def mixing_coefficients(kind: str, alpha: float) -> tuple[float, float]:
    """(coef_keep, coef_new): mixed ``keep * z_shared + new * z_f``; progressive ``keep * eps_{f-1} + new * z_f``."""
    a2 = alpha * alpha
    if kind == "mixed":
        return math.sqrt(a2 / (1.0 + a2)), math.sqrt(1.0 / (1.0 + a2))
    if kind == "progressive":
        return alpha / math.sqrt(1.0 + a2), 1.0 / math.sqrt(1.0 + a2)
    return 0.0, 1.0


def video_layout(shape: tuple[int, ...], frame_dim: int) -> tuple[int, int, int, int]:
    """(B, PRE, F, POST) of a contiguous tensor of ``shape`` with frames on ``frame_dim``."""
    if frame_dim == 0:
        return 1, 1, shape[0], math.prod(shape[1:])
    return shape[0], math.prod(shape[1:frame_dim]), shape[frame_dim], math.prod(shape[frame_dim + 1:])


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle). Draws with torch's generators, so
# its numbers differ from the kernel's; the distribution is the same.
# ----------------------------------------------------------------------------------------------
def _mix(z: torch.Tensor, z_shared: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """z: (B, PRE, F, POST) fp32 draws; z_shared: (B, PRE, 1, POST)."""
    keep, new = mixing_coefficients(kind, alpha)
    if kind == "iid":
        return z
    if kind == "mixed":
        return keep * z_shared + new * z
    frames = [z[:, :, 0]]
    for f in range(1, z.shape[2]):
        frames.append(keep * frames[-1] + new * z[:, :, f])
    return torch.stack(frames, dim=2)


def correlated_noise_reference(shape, kind, alpha, frame_dim, seed, seeds, dtype, device) -> torch.Tensor:
    """Noise of ``shape``: one int ``seed`` for the batch, or ``seeds`` (B,) one per video."""
    B, PRE, F, POST = video_layout(shape, frame_dim)
    device = torch.device(device)

    def draw(generator, videos):
        z = torch.randn((videos, PRE, F + 1, POST), generator=generator, device=device, dtype=torch.float32)
        return _mix(z[:, :, :F], z[:, :, F:], kind, alpha)

    if seeds is None:
        eps = draw(torch.Generator(device).manual_seed(seed), B)
    else:
        eps = torch.cat([draw(torch.Generator(device).manual_seed(int(s)), 1) for s in seeds.tolist()])
    return eps.reshape(shape).to(dtype)


def add_noise_reference(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds):
    """Forward diffusion ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with correlated ``eps``; fp32 math."""
    eps = correlated_noise_reference(tuple(x0.shape), kind, alpha, frame_dim, seed, seeds, torch.float32, x0.device)
    a = alphas_cumprod.to(x0.device, torch.float32)[timesteps.long()]
    a = a.view(-1, *([1] * (x0.dim() - 1)))
    x_t = a.sqrt() * x0.float() + (1 - a).sqrt() * eps
    return x_t.to(x0.dtype), eps.to(x0.dtype)


# ----------------------------------------------------------------------------------------------
# The correlated-noise stream (shared with kernels/guidance.py; csrc/guided_step.cu mirrors it)
# ----------------------------------------------------------------------------------------------
@triton.jit
def philox_origin(seed_lo, seed_hi, seeds_ptr, video, col, cols, num_groups, per_video_seed):
    """(Philox key, counter of frame group 0) of the columns ``col`` of ``video``: one seed per video
    (loaded from ``seeds_ptr``) starts every video's counters at 0; one seed for the batch (its two
    int32 halves, :func:`split_seed`) starts video b at ``b * num_groups * cols``."""
    key = (seed_hi.to(tl.int64) << 31) | seed_lo.to(tl.int64)
    counter = video * num_groups * cols + col
    if per_video_seed != 0:
        key = tl.load(seeds_ptr + video)
        counter = col
    return key, counter


@triton.jit
def frame_normals(key, counter, group, cols):
    """The fresh draws of frames 4 * group .. 4 * group + 3 of each column: one Philox call."""
    return tl.randn4x(key, counter + group * cols)


@triton.jit
def pick_lane(z0, z1, z2, z3, lane):
    """``(z0, z1, z2, z3)[lane]`` as selects (a dynamic index would need local memory)."""
    return tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))


@triton.jit
def shared_normal(key, counter, num_frames, cols):
    """The draw every frame of ``mixed`` noise shares: index F, lane F % 4 of group F // 4."""
    s0, s1, s2, s3 = frame_normals(key, counter, num_frames // 4, cols)
    return pick_lane(s0, s1, s2, s3, num_frames % 4)


@triton.jit
def correlate(z, f, prev, shared, kind, coef_keep, coef_new):
    """Frame f's noise from its fresh draw ``z``; ``kind`` indexes :data:`KINDS` and the coefficients
    are :func:`mixing_coefficients`: iid ``z``; mixed ``keep * shared + new * z``; progressive ``z``
    at frame 0, then ``keep * prev + new * z`` with ``prev`` frame f - 1's noise."""
    mixed = coef_keep * shared + coef_new * z
    progressive = tl.where(f == 0, z, coef_keep * prev + coef_new * z)
    return tl.where(kind == 1, mixed, tl.where(kind == 2, progressive, z))


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _store_frame(x0_ptr, xt_ptr, eps_ptr, offs, f, num_frames, post, mask, eps, sqrt_a, sqrt_1ma,
                 FUSE_ADD_NOISE: tl.constexpr):
    m = mask & ((tl.zeros_like(offs) + f) < num_frames)  # frames past F (last group) are not stored
    ptr_offs = offs + f * post
    tl.store(eps_ptr + ptr_offs, eps.to(eps_ptr.dtype.element_ty), mask=m)
    if FUSE_ADD_NOISE:
        x0 = tl.load(x0_ptr + ptr_offs, mask=m).to(tl.float32)
        tl.store(xt_ptr + ptr_offs, (sqrt_a * x0 + sqrt_1ma * eps).to(xt_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["kind"])  # one compile for every kind
def _correlated_noise_kernel(
    eps_ptr,          # (B, PRE, F, POST) contiguous, output noise (any float dtype)
    x0_ptr,           # (B, PRE, F, POST) contiguous, clean sample (read when FUSE_ADD_NOISE)
    xt_ptr,           # (B, PRE, F, POST) contiguous, noisy sample (written when FUSE_ADD_NOISE)
    timesteps_ptr,    # (B,) int: per-video timestep (FUSE_ADD_NOISE)
    alphas_ptr,       # (T,) float: alphas_cumprod (FUSE_ADD_NOISE)
    seed_lo, seed_hi, # int32 halves of the batch's seed (< 2**62) when not PER_VIDEO_SEED; two
                      # fixed-width halves keep the compiled signature independent of the seed's value
    seeds_ptr,        # (B,) int64: one seed per video when PER_VIDEO_SEED
    cols,             # PRE * POST: columns per video
    post,             # POST: stride of the frame axis
    num_frames,       # F
    num_groups,       # cdiv(F + 1, 4): Philox counters per column (batch-seed stride)
    blocks_per_video, # cdiv(cols, BLOCK)
    kind, coef_keep, coef_new,     # KINDS index, fp32 mixing_coefficients(kind, alpha)
    PER_VIDEO_SEED: tl.constexpr,
    FUSE_ADD_NOISE: tl.constexpr,
    INT64: tl.constexpr,           # element or counter indices reach 2**31
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    video = pid // blocks_per_video
    col = (pid % blocks_per_video) * BLOCK + tl.arange(0, BLOCK)
    if INT64:
        video = video.to(tl.int64)
        col = col.to(tl.int64)
        post = post.to(tl.int64)
        cols = cols.to(tl.int64)
    mask = col < cols
    row = col // post
    offs = video * cols * num_frames + row * post * num_frames + (col - row * post)
    key, counter = philox_origin(seed_lo, seed_hi, seeds_ptr, video, col, cols, num_groups, PER_VIDEO_SEED)

    sqrt_a = 0.0
    sqrt_1ma = 0.0
    if FUSE_ADD_NOISE:
        a = tl.load(alphas_ptr + tl.load(timesteps_ptr + video)).to(tl.float32)
        sqrt_a = tl.sqrt(a)
        sqrt_1ma = tl.sqrt(1.0 - a)

    shared = tl.zeros([BLOCK], tl.float32)
    if kind == 1:
        shared = shared_normal(key, counter, num_frames, cols)
    prev = tl.zeros([BLOCK], tl.float32)
    for g in range(0, tl.cdiv(num_frames, 4)):
        z0, z1, z2, z3 = frame_normals(key, counter, g, cols)
        for lane in tl.static_range(4):
            f = 4 * g + lane
            prev = correlate(pick_lane(z0, z1, z2, z3, lane), f, prev, shared, kind, coef_keep, coef_new)
            _store_frame(x0_ptr, xt_ptr, eps_ptr, offs, f, num_frames, post, mask, prev, sqrt_a, sqrt_1ma,
                         FUSE_ADD_NOISE)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
SEED_LIMIT = 2**62


def split_seed(seed: int) -> tuple[int, int]:
    """A seed in [0, 2**62) as two int32 kernel arguments (low 31 bits, high bits)."""
    return seed & 0x7FFFFFFF, seed >> 31


class LaunchPlan(NamedTuple):
    batch: int
    cols: int
    post: int
    frames: int
    num_groups: int
    blocks_per_video: int
    int64: bool

    @property
    def grid(self) -> tuple[int]:
        return (self.batch * self.blocks_per_video,)


def launch_plan(shape: tuple[int, ...], frame_dim: int) -> LaunchPlan:
    """Grid and index width for ``shape``; refuses what one 1-D grid cannot cover."""
    B, PRE, F, POST = video_layout(shape, frame_dim)
    cols = PRE * POST
    num_groups = cdiv(F + 1, 4)
    blocks_per_video = cdiv(cols, _BLOCK)
    if B * blocks_per_video >= _INT32_LIMIT:
        raise ValueError(f"shape {shape} needs {B * blocks_per_video} programs; one launch takes at most 2**31 - 1")
    int64 = max(math.prod(shape), B * num_groups * cols, B * blocks_per_video * _BLOCK) >= _INT32_LIMIT
    return LaunchPlan(B, cols, POST, F, num_groups, blocks_per_video, int64)


def _launch(eps, kind, alpha, frame_dim, seed, seeds, x0=None, xt=None, timesteps=None, alphas_cumprod=None):
    plan = launch_plan(tuple(eps.shape), frame_dim)
    fuse = x0 is not None
    _correlated_noise_kernel[plan.grid](
        eps, x0 if fuse else eps, xt if fuse else eps,
        timesteps if fuse else eps, alphas_cumprod if fuse else eps,
        *split_seed(seed if seeds is None else 0), seeds if seeds is not None else eps,
        plan.cols, plan.post, plan.frames, plan.num_groups, plan.blocks_per_video,
        KINDS.index(kind), *mixing_coefficients(kind, alpha), PER_VIDEO_SEED=seeds is not None, FUSE_ADD_NOISE=fuse,
        INT64=plan.int64, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )


def correlated_noise_triton(shape, kind, alpha, frame_dim, seed, seeds, dtype, device) -> torch.Tensor:
    eps = torch.empty(shape, dtype=dtype, device=device)
    _launch(eps, kind, alpha, frame_dim, seed, seeds)
    return eps


def add_noise_triton(x0, timesteps, alphas_cumprod, kind, alpha, frame_dim, seed, seeds):
    x0 = x0.contiguous()
    timesteps, alphas_cumprod = timesteps.long(), alphas_cumprod.float()  # the compiled variants (aot_specs)
    xt, eps = torch.empty_like(x0), torch.empty_like(x0)
    _launch(eps, kind, alpha, frame_dim, seed, seeds, x0=x0, xt=xt, timesteps=timesteps,
            alphas_cumprod=alphas_cumprod)
    return xt, eps


def aot_specs() -> list[KernelSpec]:
    specs = []
    for dtype in ("fp32", "fp16", "bf16"):
        for per_video in (False, True):
            for fuse in (False, True):
                for int64 in (False, True):
                    size = "i64" if int64 else "i32"
                    specs.append(KernelSpec(
                        module=__name__, kernel="_correlated_noise_kernel",
                        signature={
                            "eps_ptr": f"*{dtype}", "x0_ptr": f"*{dtype}", "xt_ptr": f"*{dtype}",
                            "timesteps_ptr": "*i64", "alphas_ptr": "*fp32", "seed_lo": "i32", "seed_hi": "i32",
                            "seeds_ptr": "*i64",
                            "cols": size, "post": size, "num_frames": "i32", "num_groups": "i32",
                            "blocks_per_video": "i32", "kind": "i32", "coef_keep": "fp32",
                            "coef_new": "fp32", "PER_VIDEO_SEED": "constexpr",
                            "FUSE_ADD_NOISE": "constexpr", "INT64": "constexpr", "BLOCK": "constexpr"},
                        constexprs={"PER_VIDEO_SEED": per_video, "FUSE_ADD_NOISE": fuse, "INT64": int64,
                                    "BLOCK": _BLOCK},
                        num_warps=_NUM_WARPS, num_stages=1, max_stack=PHILOX_NORMALS_STACK,
                        stack_note=PHILOX_NORMALS_NOTE))
    return specs
