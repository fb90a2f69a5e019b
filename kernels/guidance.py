"""The fused guidance step: Video Adapter score composition + CFG (+ rescale) + one DDIM or Euler step.

METHODS.md sections 4 and 5. Per element, in fp32::

    eps_text = eps_cond + prior_strength * prior_cond             # Video Adapter composition
    eps      = eps_uncond + w * (eps_text - eps_uncond)           # CFG; w one scale, or the element's frame's
    eps      = eps * (phi * std(eps_text) / std(eps) + 1 - phi)     # rescale_noise_cfg (per video)
    DDIM:  x0, e = from (sample, eps) by the prediction type; x0 clipped to +-clip_sample_range
           out   = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) e + sigma z      # (inverse: sigma = 0)
    Euler: x0    = from (sample, eps) at noise level s by the prediction type
           out   = sample + (sample - x0) / s * (s_next - s)           # EulerDiscreteScheduler, s_churn = 0

Tensors are viewed as (B, PRE, F, POST), contiguous, the frame axis at dim 2 like
:mod:`vidgen.kernels.noise` (B videos, PRE = channels, POST = h * w). Without in-kernel noise
the frame structure does not matter and the view is (B, 1, 1, N) with N elements per video; a
per-frame guidance scale finds an element's frame from its offset in the video and the layout of
its own frame axis (``Guidance.frame_dim``: SVD's latents are (B, F, C, h, w)).

A step's settings travel in three groups, the same for every implementation (the reference,
the Triton launcher, the CUDA library's): :class:`Guidance` (how the predictions combine),
the step rule with its noise levels (:class:`DDIMStep` or :class:`EulerStep`) and
:class:`NoiseDraw` (z drawn in the kernel; a given z is a tensor). The kernels take either rule
as two noise levels (cumulative alphas for DDIM, sigmas for Euler) and a rule flag, and fold the
rule into a few per-video coefficients: the elementwise pass is the same for both.

Two passes: when ``guidance_rescale > 0`` a reduction (``_rescale_stats_kernel``) writes
NUM_PARTIALS shifted partial sums per video, and the elementwise pass
(``_guided_step_kernel``) folds them into the per-video factor before reading each input
once and writing the output (and x0 when asked) once.

In-kernel noise is drawn by the stream helpers of :mod:`vidgen.kernels.noise` (Philox key and
counters, the frames' and the shared draws, the correlation of each kind), so it equals
``vidgen.ops.correlated_noise(sample.shape, kind, alpha, frame_dim=2, seed)``. A program owns 4
frames of BLOCK columns; for ``progressive`` noise it replays the Philox draws of the earlier
frames in registers to rebuild the AR(1) chain (compute only, no memory), so frame groups run in
parallel.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._aot import PHILOX_NORMALS_NOTE, PHILOX_NORMALS_STACK, KernelSpec
from ._launch import cdiv
from .noise import (KINDS, correlate, correlated_noise_reference, frame_normals, mixing_coefficients, philox_origin,
                    pick_lane, shared_normal, split_seed, video_layout)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
NUM_PARTIALS = 64  # partial sums per video written by the rescale reduction
NOISE_NONE, NOISE_GIVEN, NOISE_GENERATED = 0, 1, 2
RULE_DDIM, RULE_EULER = 0, 1  # the step rule the kernels take (their noise levels: alphas or sigmas)
_BLOCK, _NUM_WARPS = 1024, 4
_INT32_LIMIT = 2**31
# Elements of a whole sample a per-frame guidance scale serves: its kernels are compiled for 32-bit
# offsets only (INT64=False), where the frame index is one 32-bit division.
MAX_PER_FRAME_SCALED = _INT32_LIMIT - NUM_PARTIALS * _BLOCK


@dataclass(frozen=True)
class Guidance:
    """How the model's predictions combine into the eps a step takes (METHODS.md 4)."""

    scale: float | torch.Tensor = 1.0  # classifier-free guidance w (used when eps_uncond is given); or an
                                       # fp32 (F,) tensor on the sample's device: one w per frame
    prior_strength: float = 0.0  # Video Adapter's lambda (used when prior_cond is given)
    rescale: float = 0.0         # rescale_noise_cfg's phi (used with eps_uncond)
    frame_dim: int = 2           # the frame axis of the sample, where a per-frame scale applies


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM step (METHODS.md 5) from cumulative alpha ``alpha_prod_t`` to ``alpha_prod_prev``, or
    with ``inverse`` DDIM inversion's step (deterministic: eta is 0). An alpha is a float, or an fp32
    (1,)/(B,) tensor on the sample's device that the kernels read there (no host sync)."""

    alpha_prod_t: float | torch.Tensor
    alpha_prod_prev: float | torch.Tensor
    eta: float = 0.0
    prediction_type: str = "epsilon"      # one of PREDICTION_TYPES
    clip_sample_range: float | None = None  # clamp x0 to +-range (None: no clamp)
    use_clipped_model_output: bool = False
    inverse: bool = False

    @property
    def adds_noise(self) -> bool:
        """Whether the step adds sigma z (needs z: a given tensor or a :class:`NoiseDraw`)."""
        return self.eta > 0 and not self.inverse


@dataclass(frozen=True)
class EulerStep:
    """One step of diffusers' ``EulerDiscreteScheduler`` without churn (``s_churn = 0``, deterministic)
    from noise level ``sigma`` to ``sigma_next`` (METHODS.md 5). A sigma is a float, or an fp32
    (1,)/(B,) tensor on the sample's device (the scheduler's sigma table, read there)."""

    sigma: float | torch.Tensor
    sigma_next: float | torch.Tensor
    prediction_type: str = "epsilon"  # one of PREDICTION_TYPES ("sample": diffusers' "original_sample")

    adds_noise = False


@dataclass(frozen=True)
class NoiseDraw:
    """z drawn in the kernel: ``correlated_noise(sample.shape, kind, alpha, frame_dim=2, seed)``, with
    ``seeds`` (B,) int64 one seed per video instead of ``seed`` when given."""

    kind: str            # one of noise.KINDS
    alpha: float = 0.0
    seed: int = 0
    seeds: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Reference (the spec, the CPU fallback and the test oracle): diffusers' formulas, written out.
# Computes in fp32, or fp64 for fp64 inputs (how the tests evaluate it).
# ----------------------------------------------------------------------------------------------
def _per_video(level, batch: int, ndim: int, dtype, device) -> torch.Tensor:
    """A float, 0-d or (B,) tensor -> a (B, 1, ..., 1) tensor broadcasting over a video."""
    a = torch.as_tensor(level, dtype=dtype, device=device)
    return a.reshape(-1).expand(batch).reshape(batch, *([1] * (ndim - 1)))


def _scale_reference(guidance: Guidance, ndim: int, dtype):
    """w as a float, or the per-frame (F,) scale shaped to broadcast along ``guidance.frame_dim``."""
    if not isinstance(guidance.scale, torch.Tensor):
        return guidance.scale
    shape = [1] * ndim
    shape[guidance.frame_dim] = -1
    return guidance.scale.to(dtype).reshape(shape)


def compose_reference(eps_cond, eps_uncond, prior_cond, guidance: Guidance):
    """Video Adapter composition + CFG + rescale_noise_cfg, in the dtype of the inputs."""
    eps_text = eps_cond if prior_cond is None else eps_cond + guidance.prior_strength * prior_cond
    if eps_uncond is None:  # no guidance; rescale would compare eps_text with itself
        return eps_text
    eps = eps_uncond + _scale_reference(guidance, eps_cond.dim(), eps_cond.dtype) * (eps_text - eps_uncond)
    if guidance.rescale > 0:
        dims = list(range(1, eps.dim()))
        ratio = eps_text.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True)
        eps = guidance.rescale * (eps * ratio) + (1 - guidance.rescale) * eps
    return eps


def _ddim_reference(x, model_output, step: DDIMStep, noise):
    batch, compute = x.shape[0], x.dtype
    a_t = _per_video(step.alpha_prod_t, batch, x.dim(), compute, x.device)
    a_p = _per_video(step.alpha_prod_prev, batch, x.dim(), compute, x.device)
    b_t = 1 - a_t
    prediction_type, clip_sample_range, eta = step.prediction_type, step.clip_sample_range, step.eta
    if prediction_type == "epsilon":
        x0, e = (x - b_t.sqrt() * model_output) / a_t.sqrt(), model_output
    elif prediction_type == "v_prediction":
        x0, e = a_t.sqrt() * x - b_t.sqrt() * model_output, a_t.sqrt() * model_output + b_t.sqrt() * x
    else:  # "sample"
        x0 = model_output
        e = (x - a_t.sqrt() * x0) / b_t.sqrt()
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        if step.use_clipped_model_output:
            e = (x - a_t.sqrt() * x0) / b_t.sqrt()
    if step.inverse:
        return a_p.sqrt() * x0 + (1 - a_p).sqrt() * e, x0
    sigma = eta * ((1 - a_p) / b_t * (1 - a_t / a_p)).sqrt()
    # clamp: rounding can push 1 - a_p - sigma^2 a hair below 0 at eta = 1 (diffusers: NaN)
    out = a_p.sqrt() * x0 + (1 - a_p - sigma**2).clamp(min=0).sqrt() * e
    if eta > 0:
        out = out + sigma * noise.to(compute)
    return out, x0


def _euler_reference(x, model_output, step: EulerStep):
    """``EulerDiscreteScheduler.step`` at ``s_churn = 0`` (sigma_hat = sigma), line by line."""
    batch, compute = x.shape[0], x.dtype
    sigma = _per_video(step.sigma, batch, x.dim(), compute, x.device)
    sigma_next = _per_video(step.sigma_next, batch, x.dim(), compute, x.device)
    if step.prediction_type == "epsilon":
        x0 = x - sigma * model_output
    elif step.prediction_type == "v_prediction":
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    else:  # "sample"
        x0 = model_output
    derivative = (x - x0) / sigma
    return x + derivative * (sigma_next - sigma), x0


def guided_step_reference(sample, eps_cond, eps_uncond, prior_cond, guidance: Guidance,
                          step: DDIMStep | EulerStep, noise: torch.Tensor | None = None):
    """(x_prev, pred_original_sample) in ``sample``'s dtype; ``noise`` is z (needed when the step adds noise)."""
    compute = torch.float64 if sample.dtype == torch.float64 else torch.float32
    up = (lambda t: None if t is None else t.to(compute))  # noqa: E731
    x = sample.to(compute)
    model_output = compose_reference(up(eps_cond), up(eps_uncond), up(prior_cond), guidance)
    if isinstance(step, EulerStep):
        out, x0 = _euler_reference(x, model_output, step)
    else:
        out, x0 = _ddim_reference(x, model_output, step, noise)
    return out.to(sample.dtype, copy=True), x0.to(sample.dtype, copy=True)


def generated_noise_reference(shape, draw: NoiseDraw, device) -> torch.Tensor:
    """The reference backend's in-step noise: correlated_noise's reference draw (fp32)."""
    return correlated_noise_reference(tuple(shape), draw.kind, draw.alpha, 2, draw.seed, draw.seeds, torch.float32,
                                      device)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _compose(cond_ptr, uncond_ptr, prior_ptr, offs, in_video, mask, guidance_scale, scales_ptr, scale_post,
             scale_frames, prior_strength, HAS_UNCOND: tl.constexpr, HAS_PRIOR: tl.constexpr,
             PER_FRAME: tl.constexpr):
    """(eps_text, eps) of one tile, fp32. ``in_video``: the elements' offsets within their video, which
    place them on a frame when the scale is per frame (PER_FRAME: ``scales_ptr[frame]``)."""
    text = tl.load(cond_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_PRIOR:
        text = text + prior_strength * tl.load(prior_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = text
    if HAS_UNCOND:
        uncond = tl.load(uncond_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.zeros(text.shape, tl.float32) + guidance_scale
        if PER_FRAME:
            # A compile of its own (a runtime branch made the fp32 INT64 step kernels spill on sm_90), on
            # 32-bit offsets: a 64-bit division next to the step kernel's own made ptxas outline both.
            frame = (in_video.to(tl.int32) // scale_post.to(tl.int32)) % scale_frames
            scale = tl.load(scales_ptr + frame, mask=mask, other=0.0)
        eps = uncond + scale * (text - uncond)
    return text, eps


@triton.jit(do_not_specialize=["scale_frames"])
def _rescale_stats_kernel(
    partials_ptr,   # (B, NUM_PARTIALS, 4) fp32 out: sum and sum of squares of eps_text, eps (shifted)
    cond_ptr,       # (B, N) eps_cond
    uncond_ptr,     # (B, N) eps_uncond
    prior_ptr,      # (B, N) prior_cond (read when HAS_PRIOR)
    scales_ptr,     # (F,) fp32 guidance scale per frame (read when scale_frames > 0)
    n_per_video,    # N
    chunk,          # elements per partial, a multiple of BLOCK
    guidance_scale, prior_strength,
    scale_post,     # elements per frame step along the scale's frame axis
    scale_frames,   # F of a per-frame scale, 0: guidance_scale for every element
    HAS_PRIOR: tl.constexpr, PER_FRAME: tl.constexpr, INT64: tl.constexpr, NUM_PARTIALS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    video = pid // NUM_PARTIALS
    part = pid % NUM_PARTIALS
    if INT64:
        video = video.to(tl.int64)
        n_per_video = n_per_video.to(tl.int64)
        chunk = chunk.to(tl.int64)
    base = video * n_per_video
    # Shift by the video's first element so that sum-of-squares variance keeps its precision.
    first = tl.arange(0, 1)
    pivot_text, pivot_eps = _compose(cond_ptr, uncond_ptr, prior_ptr, base + first, first, first >= 0,
                                     guidance_scale, scales_ptr, scale_post, scale_frames, prior_strength,
                                     True, HAS_PRIOR, PER_FRAME)
    pivot_text = tl.sum(pivot_text, axis=0)
    pivot_eps = tl.sum(pivot_eps, axis=0)
    s_text = tl.zeros([BLOCK], tl.float32)
    q_text = tl.zeros([BLOCK], tl.float32)
    s_eps = tl.zeros([BLOCK], tl.float32)
    q_eps = tl.zeros([BLOCK], tl.float32)
    for start in range(0, chunk, BLOCK):
        idx = part * chunk + start + tl.arange(0, BLOCK)
        mask = idx < n_per_video
        text, eps = _compose(cond_ptr, uncond_ptr, prior_ptr, base + idx, idx, mask, guidance_scale, scales_ptr,
                             scale_post, scale_frames, prior_strength, True, HAS_PRIOR, PER_FRAME)
        dt = tl.where(mask, text - pivot_text, 0.0)
        de = tl.where(mask, eps - pivot_eps, 0.0)
        s_text += dt
        q_text += dt * dt
        s_eps += de
        q_eps += de * de
    out = partials_ptr + (video * NUM_PARTIALS + part) * 4
    tl.store(out + 0, tl.sum(s_text, axis=0))
    tl.store(out + 1, tl.sum(q_text, axis=0))
    tl.store(out + 2, tl.sum(s_eps, axis=0))
    tl.store(out + 3, tl.sum(q_eps, axis=0))


@triton.jit
def _rescale_factor(partials_ptr, video, n_per_video, guidance_rescale, NUM_PARTIALS: tl.constexpr):
    """phi * std(eps_text) / std(eps) + 1 - phi from the video's partial sums (unbiased std)."""
    rows = partials_ptr + (video * NUM_PARTIALS + tl.arange(0, NUM_PARTIALS)) * 4
    n = n_per_video.to(tl.float32)
    s_text = tl.sum(tl.load(rows + 0), axis=0)
    q_text = tl.sum(tl.load(rows + 1), axis=0)
    s_eps = tl.sum(tl.load(rows + 2), axis=0)
    q_eps = tl.sum(tl.load(rows + 3), axis=0)
    var_text = (q_text - s_text * s_text / n) / (n - 1.0)
    var_eps = (q_eps - s_eps * s_eps / n) / (n - 1.0)
    return guidance_rescale * tl.sqrt(var_text / var_eps) + (1.0 - guidance_rescale)


@triton.jit
def _step_frame(out_ptr, x0_ptr, sample_ptr, cond_ptr, uncond_ptr, prior_ptr, noise_ptr, offs, in_video, mask, z,
                guidance_scale, scales_ptr, scale_post, scale_frames, prior_strength, factor,
                c_x0_x, c_x0_e, c_e_x, c_e_e, sqrt_a, inv_sqrt_1ma, clip, clip_range, use_clipped,
                c_out_x0, c_out_e, sigma, write_x0,
                HAS_UNCOND: tl.constexpr, HAS_PRIOR: tl.constexpr, NOISE: tl.constexpr, PER_FRAME: tl.constexpr):
    """Compose, guide, rescale and step one tile; each input read once, each output written once."""
    _, eps = _compose(cond_ptr, uncond_ptr, prior_ptr, offs, in_video, mask, guidance_scale, scales_ptr,
                      scale_post, scale_frames, prior_strength, HAS_UNCOND, HAS_PRIOR, PER_FRAME)
    eps = eps * factor
    x = tl.load(sample_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x0 = c_x0_x * x + c_x0_e * eps
    e = c_e_x * x + c_e_e * eps
    x0 = tl.where(clip != 0, tl.minimum(tl.maximum(x0, -clip_range), clip_range), x0)
    e = tl.where(use_clipped != 0, (x - sqrt_a * x0) * inv_sqrt_1ma, e)
    out = c_out_x0 * x0 + c_out_e * e
    if NOISE == 1:
        out += sigma * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        out += sigma * z
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if write_x0 != 0:
        tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["level_t_stride", "level_p_stride", "seed_lo", "seed_hi", "per_video_seed", "kind",
                               "rule", "prediction", "clip", "use_clipped", "inverse", "write_x0", "rescale",
                               "scale_frames"])  # flags: one compile
def _guided_step_kernel(
    out_ptr,          # (B, PRE, F, POST) out: x_prev (x_next when inverse)
    x0_ptr,           # (B, PRE, F, POST) out: predicted x0 (written when write_x0)
    sample_ptr,       # (B, PRE, F, POST) x_t
    cond_ptr,         # (B, PRE, F, POST) eps_cond
    uncond_ptr,       # (B, PRE, F, POST) eps_uncond (read when HAS_UNCOND)
    prior_ptr,        # (B, PRE, F, POST) prior_cond (read when HAS_PRIOR)
    noise_ptr,        # (B, PRE, F, POST) z (read when NOISE == 1)
    partials_ptr,     # (B, NUM_PARTIALS, 4) fp32 rescale partial sums (read when rescale)
    level_t_ptr,      # (1,) or (B,) fp32 noise level of the input (read when level_t_stride >= 0)
    level_p_ptr,      # (1,) or (B,) fp32 noise level of the output (read when level_p_stride >= 0)
    seeds_ptr,        # (B,) int64 one seed per video (read when per_video_seed)
    scales_ptr,       # (F,) fp32 guidance scale per frame (read when scale_frames > 0)
    level_t, level_p,                 # fp32 scalars used when the stride is -1
    level_t_stride, level_p_stride,   # -1 scalar, 0 one tensor value, 1 one per video
    guidance_scale, prior_strength, guidance_rescale, eta, clip_range,  # fp32
    rule,             # 0 DDIM (levels: cumulative alphas), 1 Euler (levels: sigmas)
    prediction,       # 0 epsilon, 1 v_prediction, 2 sample
    clip,             # clamp x0 to +-clip_range
    use_clipped,      # recompute e from the clipped x0 (diffusers use_clipped_model_output)
    inverse,          # DDIM inversion step
    write_x0, rescale,
    seed_lo, seed_hi, per_video_seed, kind, coef_keep, coef_new,  # in-kernel noise (noise.py's layout and seed halves)
    n_per_video,      # N = PRE * F * POST
    cols,             # PRE * POST
    post,             # POST
    num_frames,       # F
    num_groups,       # cdiv(F + 1, 4): Philox counters per column
    blocks_per_video, # cdiv(cols, BLOCK)
    frame_groups,     # cdiv(F, 4) with in-kernel noise, else 1
    scale_post,       # elements per frame step along the per-frame scale's frame axis
    scale_frames,     # F of a per-frame guidance scale, 0: guidance_scale for every element
    HAS_UNCOND: tl.constexpr, HAS_PRIOR: tl.constexpr,
    NOISE: tl.constexpr,               # 0 none (eta = 0), 1 given tensor, 2 generated
    PER_FRAME: tl.constexpr,           # scales_ptr holds one guidance scale per frame (32-bit offsets only)
    INT64: tl.constexpr, NUM_PARTIALS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    video = pid // (blocks_per_video * frame_groups)
    rest = pid % (blocks_per_video * frame_groups)
    group = rest // blocks_per_video
    col = (rest % blocks_per_video) * BLOCK + tl.arange(0, BLOCK)
    if INT64:
        video = video.to(tl.int64)
        col = col.to(tl.int64)
        cols = cols.to(tl.int64)
        post = post.to(tl.int64)
        n_per_video = n_per_video.to(tl.int64)
    mask = col < cols
    row = col // post
    in_video = row * post * num_frames + (col - row * post)
    offs = video * n_per_video + in_video

    # Per-video scalars: the noise levels and the linear maps (x, eps) -> x0, (x, eps) -> e,
    # out = c_out_x0 x0 + c_out_e e + sigma z. Both rules are evaluated (scalars, once per program)
    # and one is selected; each on placeholder levels when not taken, so neither makes a NaN.
    lt = level_t
    if level_t_stride >= 0:
        lt = tl.load(level_t_ptr + video * level_t_stride).to(tl.float32)
    lp = level_p
    if level_p_stride >= 0:
        lp = tl.load(level_p_ptr + video * level_p_stride).to(tl.float32)
    is_euler = rule == 1
    is_v = prediction == 1
    is_x0 = prediction == 2
    # DDIM at cumulative alphas a_t -> a_p
    a_t = tl.where(is_euler, 0.5, lt)
    a_p = tl.where(is_euler, 0.5, lp)
    sqrt_a = tl.sqrt(a_t)
    sqrt_1ma = tl.sqrt(1.0 - a_t)
    c_x0_x = tl.where(is_v, sqrt_a, tl.where(is_x0, 0.0, 1.0 / sqrt_a))
    c_x0_e = tl.where(is_v, -sqrt_1ma, tl.where(is_x0, 1.0, -sqrt_1ma / sqrt_a))
    c_e_x = tl.where(is_v, sqrt_1ma, tl.where(is_x0, 1.0 / sqrt_1ma, 0.0))
    c_e_e = tl.where(is_v, sqrt_a, tl.where(is_x0, -sqrt_a / sqrt_1ma, 1.0))
    sigma = eta * tl.sqrt(tl.maximum((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p), 0.0))
    sigma = tl.where((inverse != 0) | is_euler, 0.0, sigma)
    c_out_e = tl.sqrt(tl.maximum(1.0 - a_p - sigma * sigma, 0.0))
    c_out_x0 = tl.sqrt(a_p)
    # Euler at sigmas s -> s_next: e is the sample itself, out = x + r (x - x0), r = (s_next - s) / s
    s = tl.where(is_euler, lt, 1.0)
    s_next = tl.where(is_euler, lp, 1.0)
    r = (s_next - s) / s
    c_x0_x = tl.where(is_euler, tl.where(is_v, 1.0 / (s * s + 1.0), tl.where(is_x0, 0.0, 1.0)), c_x0_x)
    c_x0_e = tl.where(is_euler, tl.where(is_v, -s / tl.sqrt(s * s + 1.0), tl.where(is_x0, 1.0, -s)), c_x0_e)
    c_e_x = tl.where(is_euler, 1.0, c_e_x)
    c_e_e = tl.where(is_euler, 0.0, c_e_e)
    c_out_x0 = tl.where(is_euler, -r, c_out_x0)
    c_out_e = tl.where(is_euler, 1.0 + r, c_out_e)
    factor = 1.0
    if rescale != 0:
        factor = _rescale_factor(partials_ptr, video, n_per_video, guidance_rescale, NUM_PARTIALS)

    if NOISE == 2:
        key, counter = philox_origin(seed_lo, seed_hi, seeds_ptr, video, col, cols, num_groups, per_video_seed)
        shared = tl.zeros([BLOCK], tl.float32)
        if kind == 1:
            shared = shared_normal(key, counter, num_frames, cols)
        prev = tl.zeros([BLOCK], tl.float32)
        replay = 0
        if kind == 2:
            replay = group
        for g in range(0, replay):  # rebuild the AR(1) chain up to this group's first frame
            z0, z1, z2, z3 = frame_normals(key, counter, g, cols)
            prev = correlate(z0, 4 * g, prev, shared, kind, coef_keep, coef_new)
            prev = correlate(z1, 4 * g + 1, prev, shared, kind, coef_keep, coef_new)
            prev = correlate(z2, 4 * g + 2, prev, shared, kind, coef_keep, coef_new)
            prev = correlate(z3, 4 * g + 3, prev, shared, kind, coef_keep, coef_new)
        z0, z1, z2, z3 = frame_normals(key, counter, group, cols)
        for lane in tl.static_range(4):
            f = 4 * group + lane
            prev = correlate(pick_lane(z0, z1, z2, z3, lane), f, prev, shared, kind, coef_keep, coef_new)
            frame_mask = mask & ((tl.zeros_like(col) + f) < num_frames)
            _step_frame(out_ptr, x0_ptr, sample_ptr, cond_ptr, uncond_ptr, prior_ptr, noise_ptr,
                        offs + f * post, in_video + f * post, frame_mask, prev, guidance_scale, scales_ptr,
                        scale_post, scale_frames, prior_strength, factor,
                        c_x0_x, c_x0_e, c_e_x, c_e_e, sqrt_a, 1.0 / sqrt_1ma, clip, clip_range, use_clipped,
                        c_out_x0, c_out_e, sigma, write_x0, HAS_UNCOND, HAS_PRIOR, NOISE, PER_FRAME)
    else:
        _step_frame(out_ptr, x0_ptr, sample_ptr, cond_ptr, uncond_ptr, prior_ptr, noise_ptr, offs, in_video, mask,
                    0.0, guidance_scale, scales_ptr, scale_post, scale_frames, prior_strength, factor,
                    c_x0_x, c_x0_e, c_e_x, c_e_e, sqrt_a, 1.0 / sqrt_1ma, clip, clip_range, use_clipped,
                    c_out_x0, c_out_e, sigma, write_x0, HAS_UNCOND, HAS_PRIOR, NOISE, PER_FRAME)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def level_arguments(level: float | torch.Tensor) -> tuple[float, torch.Tensor | None, int]:
    """(scalar, tensor, stride) of a step's noise level for the kernels (Triton's and the CUDA library's):
    stride -1 reads the scalar, 0 the tensor's one value, 1 one value per video."""
    if isinstance(level, torch.Tensor):
        return 0.0, level, (1 if level.numel() > 1 else 0)
    return float(level), None, -1


def step_arguments(step: DDIMStep | EulerStep) -> tuple[int, float | torch.Tensor, float | torch.Tensor, float,
                                                         float | None, bool, bool]:
    """A step rule as the kernels take it: (rule, level of the input, level of the output, eta,
    clip range or None, use_clipped, inverse); an Euler step has no noise, clipping or inversion."""
    if isinstance(step, EulerStep):
        return RULE_EULER, step.sigma, step.sigma_next, 0.0, None, False, False
    clip_range = step.clip_sample_range
    return (RULE_DDIM, step.alpha_prod_t, step.alpha_prod_prev, step.eta, clip_range,
            step.use_clipped_model_output and clip_range is not None, step.inverse)


def scale_arguments(guidance: Guidance, shape: tuple[int, ...]) -> tuple[float, torch.Tensor | None, int, int]:
    """(scalar, per-frame tensor, scale_post, scale_frames) of the guidance scale: an element at offset o
    in its video has frame (o // scale_post) % scale_frames along ``guidance.frame_dim``; scale_frames
    0 means one scalar for every element."""
    if not isinstance(guidance.scale, torch.Tensor):
        return float(guidance.scale), None, 1, 0
    post = 1
    for size in shape[guidance.frame_dim + 1:]:
        post *= size
    return 0.0, guidance.scale, post, shape[guidance.frame_dim]


def noise_mode(step: DDIMStep | EulerStep, noise: torch.Tensor | NoiseDraw | None) -> int:
    """What z the kernels read: NOISE_NONE (the step adds none), NOISE_GIVEN (a tensor) or
    NOISE_GENERATED (a :class:`NoiseDraw`, drawn in the kernel)."""
    if not step.adds_noise:
        return NOISE_NONE
    return NOISE_GENERATED if isinstance(noise, NoiseDraw) else NOISE_GIVEN


def guided_step_triton(sample, eps_cond, eps_uncond, prior_cond, guidance: Guidance, step: DDIMStep | EulerStep,
                       noise: torch.Tensor | NoiseDraw | None, *, return_pred_original: bool):
    """Launch the step on contiguous tensors: (out, x0 or None)."""
    batch, numel = sample.shape[0], sample.numel()
    n_per_video = numel // batch
    out = torch.empty_like(sample)
    x0 = torch.empty_like(sample) if return_pred_original else out
    mode = noise_mode(step, noise)
    if mode == NOISE_GENERATED:
        _, pre, frames, post = video_layout(tuple(sample.shape), 2)
        cols, frame_groups = pre * post, cdiv(frames, 4)
    else:  # frames do not matter: one flat row per video
        cols, post, frames, frame_groups = n_per_video, n_per_video, 1, 1
    num_groups = cdiv(frames + 1, 4)
    blocks_per_video = cdiv(cols, _BLOCK)
    programs = batch * blocks_per_video * frame_groups
    if programs >= _INT32_LIMIT:
        raise ValueError(f"sample: shape {tuple(sample.shape)} needs {programs} programs; the limit is 2**31 - 1")
    int64 = max(numel + NUM_PARTIALS * _BLOCK, batch * num_groups * cols + _BLOCK) >= _INT32_LIMIT
    per_frame = isinstance(guidance.scale, torch.Tensor)
    if per_frame and int64:  # the op refuses these first (MAX_PER_FRAME_SCALED)
        raise ValueError(f"guidance_scale: a per-frame scale serves samples of fewer than {MAX_PER_FRAME_SCALED} "
                         f"elements, got {numel}")
    has_uncond, has_prior = eps_uncond is not None, prior_cond is not None
    rescale = guidance.rescale > 0 and has_uncond
    # Stand-ins for absent fp32/int64 arguments keep the pointer types of aot_specs().
    unused_f32 = torch.empty(1, dtype=torch.float32, device=sample.device)
    scale, scales, scale_post, scale_frames = scale_arguments(guidance, tuple(sample.shape))
    scales = unused_f32 if scales is None else scales
    partials = unused_f32
    if rescale:
        partials = torch.empty((batch, NUM_PARTIALS, 4), dtype=torch.float32, device=sample.device)
        chunk = cdiv(cdiv(n_per_video, NUM_PARTIALS), _BLOCK) * _BLOCK
        _rescale_stats_kernel[(batch * NUM_PARTIALS,)](
            partials, eps_cond, eps_uncond, prior_cond if has_prior else eps_cond, scales, n_per_video, chunk,
            scale, guidance.prior_strength, scale_post, scale_frames,
            HAS_PRIOR=has_prior, PER_FRAME=per_frame, INT64=int64, NUM_PARTIALS=NUM_PARTIALS, BLOCK=_BLOCK,
            num_warps=_NUM_WARPS)
    rule, level_t, level_p, eta, clip_range, use_clipped, inverse = step_arguments(step)
    l_t, l_t_tensor, l_t_stride = level_arguments(level_t)
    l_p, l_p_tensor, l_p_stride = level_arguments(level_p)
    draw = noise if mode == NOISE_GENERATED else NoiseDraw("iid")  # unread unless NOISE_GENERATED
    _guided_step_kernel[(programs,)](
        out, x0, sample, eps_cond, eps_uncond if has_uncond else eps_cond,
        prior_cond if has_prior else eps_cond, noise if mode == NOISE_GIVEN else sample, partials,
        l_t_tensor if l_t_tensor is not None else unused_f32, l_p_tensor if l_p_tensor is not None else unused_f32,
        draw.seeds if draw.seeds is not None else torch.empty(1, dtype=torch.int64, device=sample.device),
        scales, l_t, l_p, l_t_stride, l_p_stride,
        scale, guidance.prior_strength, guidance.rescale, eta, 0.0 if clip_range is None else clip_range,
        rule, PREDICTION_TYPES.index(step.prediction_type), int(clip_range is not None), int(use_clipped),
        int(inverse), int(return_pred_original), int(rescale),
        *split_seed(draw.seed), int(draw.seeds is not None), KINDS.index(draw.kind),
        *mixing_coefficients(draw.kind, draw.alpha),
        n_per_video, cols, post, frames, num_groups, blocks_per_video, frame_groups, scale_post, scale_frames,
        HAS_UNCOND=has_uncond, HAS_PRIOR=has_prior, NOISE=mode, PER_FRAME=per_frame, INT64=int64,
        NUM_PARTIALS=NUM_PARTIALS,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return out, (x0 if return_pred_original else None)


def aot_specs() -> list[KernelSpec]:
    specs = []
    # A per-frame scale is compiled for 32-bit offsets only (MAX_PER_FRAME_SCALED).
    for dtype, int64, per_frame in itertools.product(("fp32", "fp16", "bf16"), (False, True), (False, True)):
        if int64 and per_frame:
            continue
        size = "i64" if int64 else "i32"
        for has_prior in (False, True):
            specs.append(KernelSpec(
                module=__name__, kernel="_rescale_stats_kernel",
                signature={"partials_ptr": "*fp32", "cond_ptr": f"*{dtype}", "uncond_ptr": f"*{dtype}",
                           "prior_ptr": f"*{dtype}", "scales_ptr": "*fp32", "n_per_video": size, "chunk": size,
                           "guidance_scale": "fp32", "prior_strength": "fp32", "scale_post": size,
                           "scale_frames": "i32", "HAS_PRIOR": "constexpr", "PER_FRAME": "constexpr",
                           "INT64": "constexpr", "NUM_PARTIALS": "constexpr", "BLOCK": "constexpr"},
                constexprs={"HAS_PRIOR": has_prior, "PER_FRAME": per_frame, "INT64": int64,
                            "NUM_PARTIALS": NUM_PARTIALS, "BLOCK": _BLOCK},
                num_warps=_NUM_WARPS, num_stages=1))
            for has_uncond in (False, True):
                for noise in (NOISE_NONE, NOISE_GIVEN, NOISE_GENERATED):
                    signature = {f"{name}_ptr": f"*{dtype}" for name in
                                 ("out", "x0", "sample", "cond", "uncond", "prior", "noise")}
                    signature.update({"partials_ptr": "*fp32", "level_t_ptr": "*fp32", "level_p_ptr": "*fp32",
                                      "seeds_ptr": "*i64", "scales_ptr": "*fp32", "level_t": "fp32",
                                      "level_p": "fp32", "level_t_stride": "i32", "level_p_stride": "i32"})
                    signature.update({name: "fp32" for name in ("guidance_scale", "prior_strength",
                                                                "guidance_rescale", "eta", "clip_range")})
                    signature.update({name: "i32" for name in ("rule", "prediction", "clip", "use_clipped",
                                                               "inverse", "write_x0", "rescale")})
                    signature.update({"seed_lo": "i32", "seed_hi": "i32", "per_video_seed": "i32", "kind": "i32",
                                      "coef_keep": "fp32", "coef_new": "fp32", "n_per_video": size,
                                      "cols": size, "post": size, "num_frames": "i32", "num_groups": "i32",
                                      "blocks_per_video": "i32", "frame_groups": "i32", "scale_post": size,
                                      "scale_frames": "i32"})
                    constexprs = {"HAS_UNCOND": has_uncond, "HAS_PRIOR": has_prior, "NOISE": noise,
                                  "PER_FRAME": per_frame, "INT64": int64, "NUM_PARTIALS": NUM_PARTIALS,
                                  "BLOCK": _BLOCK}
                    signature.update({name: "constexpr" for name in constexprs})
                    draws = noise == NOISE_GENERATED  # in-kernel normals: libdevice's sin/cos array
                    specs.append(KernelSpec(module=__name__, kernel="_guided_step_kernel", signature=signature,
                                            constexprs=constexprs, num_warps=_NUM_WARPS, num_stages=1,
                                            max_stack=PHILOX_NORMALS_STACK if draws else 0,
                                            stack_note=PHILOX_NORMALS_NOTE if draws else ""))
    return specs
