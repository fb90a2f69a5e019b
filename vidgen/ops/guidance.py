"""Public op :func:`guided_step`: score composition + CFG + a DDIM or Euler step in one pass (METHODS.md 4-5)."""
from __future__ import annotations

import torch

from . import _backend, _checks, _cuda_lib
from ..kernels import guidance as _kernels
from ..kernels import noise as _noise_kernels
# The composition alone, eager, and its settings: for diffusers' own step (dynamic thresholding).
from ..kernels.guidance import Guidance, compose_reference  # noqa: F401
from .noise import resolve_seed

GUIDED_STEP = _backend.declare("guided_step", ("cuda", "triton", "torch"))


# Custom op: opaque to torch.compile and safe under CUDA-graph capture (noise levels may be device
# tensors, so replays can take new timesteps; the seed is an int resolved before the call). Its
# schema takes tensors and scalars, so the step's settings arrive flat and are grouped here, once:
# every implementation below takes the groups (kernels/guidance.py: Guidance, DDIMStep or EulerStep,
# NoiseDraw).
@torch.library.custom_op("vidgen::guided_step", mutates_args=())
def _guided_step_op(sample: torch.Tensor, return_pred_original: bool, eps_cond: torch.Tensor,
                    eps_uncond: torch.Tensor | None, prior_cond: torch.Tensor | None, noise: torch.Tensor | None,
                    seeds: torch.Tensor | None, level_t_tensor: torch.Tensor | None,
                    level_p_tensor: torch.Tensor | None, scales: torch.Tensor | None, guidance_scale: float,
                    prior_strength: float, guidance_rescale: float, frame_dim: int, rule: str, level_t: float,
                    level_p: float, eta: float, prediction_type: str, clip_sample_range: float | None,
                    use_clipped_model_output: bool, inverse: bool, noise_kind: str | None, noise_alpha: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    guidance = _kernels.Guidance(guidance_scale if scales is None else scales, prior_strength, guidance_rescale,
                                 frame_dim)
    level_t = level_t if level_t_tensor is None else level_t_tensor
    level_p = level_p if level_p_tensor is None else level_p_tensor
    if rule == "euler":
        step = _kernels.EulerStep(level_t, level_p, prediction_type)
    else:
        step = _kernels.DDIMStep(level_t, level_p, eta, prediction_type, clip_sample_range, use_clipped_model_output,
                                 inverse)
    z = noise if noise_kind is None else _kernels.NoiseDraw(noise_kind, noise_alpha, seed, seeds)
    backend = _backend.select(GUIDED_STEP, sample.device)
    if backend == "cuda":
        out, x0 = _cuda_lib.guided_step(sample, eps_cond, eps_uncond, prior_cond, guidance, step, z,
                                        return_pred_original=return_pred_original)
    elif backend == "triton":
        out, x0 = _kernels.guided_step_triton(sample, eps_cond, eps_uncond, prior_cond, guidance, step, z,
                                              return_pred_original=return_pred_original)
    else:
        if isinstance(z, _kernels.NoiseDraw):
            z = _kernels.generated_noise_reference(sample.shape, z, sample.device)
        out, x0 = _kernels.guided_step_reference(sample, eps_cond, eps_uncond, prior_cond, guidance, step, z)
    return out, (x0 if return_pred_original else out.new_empty(0))


@_guided_step_op.register_fake
def _guided_step_fake(sample, return_pred_original, *settings):
    out = torch.empty_like(sample, memory_format=torch.contiguous_format)
    return out, (torch.empty_like(out) if return_pred_original else out.new_empty(0))


def _check_level(name: str, level, sample: torch.Tensor, in_range, expected: str) -> tuple[float, torch.Tensor | None]:
    """A step's noise level: (float, None) or (0.0, contiguous fp32 (1,)/(B,) tensor on sample's device).
    A float must satisfy ``in_range`` (``expected`` says how); a tensor's values stay on the device
    (reading them would be a host sync)."""
    if isinstance(level, torch.Tensor):
        if not level.dtype.is_floating_point or level.dim() > 1 or level.numel() not in (1, sample.shape[0]):
            raise ValueError(f"{name}: expected a float, or a 0-d/1-d float tensor with 1 or {sample.shape[0]} "
                             f"(batch) values, got {level.dtype} of shape {tuple(level.shape)}")
        if level.device != sample.device:
            if level.device.type == "cpu" and level.numel() == 1:
                return _check_level(name, float(level), sample, in_range, expected)  # a host value: no device sync
            raise ValueError(f"{name}: expected a tensor on {sample.device} like sample, got {level.device}")
        return 0.0, level.reshape(-1).to(torch.float32).contiguous()
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise TypeError(f"{name}: expected a float or a tensor, got {type(level).__name__}")
    if not in_range(float(level)):
        raise ValueError(f"{name}: expected {expected}, got {level}")
    return float(level), None


def _check_guidance_scale(guidance_scale, sample: torch.Tensor, frame_dim: int) -> tuple[float, torch.Tensor | None, int]:
    """(w, None, frame_dim) or (0.0, contiguous fp32 (F,) tensor, frame_dim in [1, ndim)): one scale, or one
    per frame along ``frame_dim`` (which only a per-frame scale reads)."""
    if not isinstance(guidance_scale, torch.Tensor):
        return _checks.finite_number("guidance_scale", guidance_scale), None, 2
    frame_dim = _checks.dim_index("frame_dim", frame_dim, sample.dim())
    if frame_dim == 0:
        raise ValueError("frame_dim: dim 0 is the batch of videos; expected the frame axis of sample")
    frames = sample.shape[frame_dim]
    if not guidance_scale.dtype.is_floating_point or guidance_scale.dim() != 1 or guidance_scale.numel() != frames:
        raise ValueError(f"guidance_scale: expected a float, or a 1-d float tensor of one scale per frame "
                         f"({frames} along frame_dim={frame_dim}), got {guidance_scale.dtype} of shape "
                         f"{tuple(guidance_scale.shape)}")
    if guidance_scale.device != sample.device:
        raise ValueError(f"guidance_scale: expected a tensor on {sample.device} like sample, got "
                         f"{guidance_scale.device}")
    if sample.numel() >= _kernels.MAX_PER_FRAME_SCALED:
        raise ValueError(f"guidance_scale: a per-frame scale serves samples of fewer than "
                         f"{_kernels.MAX_PER_FRAME_SCALED} elements, got {sample.numel()}")
    return 0.0, guidance_scale.to(torch.float32).contiguous(), frame_dim


def guided_step(sample: torch.Tensor, eps_cond: torch.Tensor, eps_uncond: torch.Tensor | None = None,
                prior_cond: torch.Tensor | None = None, *, guidance_scale: float | torch.Tensor = 1.0,
                prior_strength: float = 0.0, guidance_rescale: float = 0.0, frame_dim: int = 2,
                alpha_prod_t=None, alpha_prod_prev=None, sigma=None, sigma_next=None, eta: float = 0.0,
                noise: torch.Tensor | None = None, noise_kind: str | None = None, noise_alpha: float = 0.0,
                seed: int | torch.Tensor | None = None, prediction_type: str = "epsilon",
                clip_sample_range: float | None = None, use_clipped_model_output: bool = False,
                inverse: bool = False, return_pred_original: bool = False):
    """One guided sampling step, fused: compose the predictions, apply guidance, take a DDIM or Euler step.

    Per element (fp32 math for fp16/bf16/fp32 tensors)::

        eps_text = eps_cond + prior_strength * prior_cond              # Video Adapter (no prior: eps_cond)
        eps      = eps_uncond + w * (eps_text - eps_uncond)             # CFG (no eps_uncond: eps_text)
        eps      = rescale_noise_cfg(eps, eps_text, guidance_rescale)    # per-video unbiased std, if > 0
        DDIM (alpha_prod_t, alpha_prod_prev given):
          x0, e  = the prediction type's (x0, epsilon) from (sample, eps); x0 clamped if clip_sample_range
          out    = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) e + sigma z,
                   sigma = eta sqrt((1 - a_p) / (1 - a_t) (1 - a_t / a_p))
        Euler (sigma, sigma_next given):
          x0     = the prediction type's x0 from (sample, eps) at noise level sigma
          out    = sample + (sample - x0) / sigma * (sigma_next - sigma)

    This is diffusers' CFG arithmetic + ``rescale_noise_cfg`` + ``DDIMScheduler.step``
    (``inverse=True``: ``DDIMInverseScheduler.step``, ``out = sqrt(a_p) x0 + sqrt(1 - a_p) e``), or
    ``EulerDiscreteScheduler.step`` without churn (``s_churn = 0``), reading every input once and
    writing ``out`` (and x0) once. ``w`` is one scale, or one per frame (Stable Video Diffusion's
    guidance grows linearly over the frames). Video Adapter's "inverse"
    adaptation (the roles of the small model and the prior swapped) is a matter of which
    predictions are passed as ``eps_cond``/``eps_uncond`` and ``prior_cond``; ``inverse=True``
    here means the DDIM inversion step.

    Args:
        sample: x_t, e.g. (B, C, F, h, w) video latents; fp16, bf16 or fp32.
        eps_cond: the conditional model output (epsilon, v or x0 as ``prediction_type`` says).
        eps_uncond: the unconditional output; ``None`` means no classifier-free guidance.
        prior_cond: the Video Adapter prior's conditional output; ``None`` means no prior.
        guidance_scale, prior_strength, guidance_rescale: w, lambda and phi above. ``guidance_scale``
            may be a 1-d float tensor on ``sample``'s device holding one w per frame along ``frame_dim``.
        frame_dim: the frame axis of ``sample`` (2: (B, C, F, h, w); 1 for diffusers' Stable Video
            Diffusion latents (B, F, C, h, w)); where a per-frame ``guidance_scale`` applies.
        alpha_prod_t, alpha_prod_prev: a DDIM step: the cumulative alphas of the input and output
            noise levels (diffusers' naming in both directions).
        sigma, sigma_next: an Euler step instead: the input's and the output's noise levels
            (``EulerDiscreteScheduler.sigmas[i]`` and ``[i + 1]``; sigma > 0, sigma_next >= 0).
            Either pair is floats, or 0-d/1-d float tensors on ``sample``'s device with one value
            or one per video, read on the device (no host sync, so a captured CUDA graph can
            replay with new timesteps).
        eta: DDIM's eta (0 is deterministic). With ``eta > 0``, z is ``noise`` if given, else
            drawn in the kernel: ``correlated_noise(sample.shape, kind=noise_kind,
            alpha=noise_alpha, frame_dim=2, seed=seed)`` exactly, for the same backend.
        noise_kind: ``"iid"``, ``"mixed"`` or ``"progressive"`` (PYoCo, frames on dim 2).
        seed: an int or one seed per video (see :func:`vidgen.ops.correlated_noise`);
            ``None`` draws one from torch's default generator. Use a new seed every step.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        clip_sample_range: clamp x0 to +-range (diffusers ``clip_sample``); ``None``: no clamp.
        use_clipped_model_output: recompute e from the clipped x0, as diffusers does.
        inverse: take the DDIM inversion step (eta must be 0).
        return_pred_original: also return the predicted x0.

    ``eta``, ``noise``, ``noise_kind``, ``clip_sample_range``, ``use_clipped_model_output`` and
    ``inverse`` are DDIM's: an Euler step refuses them.

    Returns:
        ``out`` (contiguous, ``sample``'s shape and dtype), or ``(out, pred_original_sample)``.
    """
    _checks.tensor("sample", sample)
    if sample.dim() == 0 or sample.numel() == 0:
        raise ValueError(f"sample: expected a non-empty tensor with a batch dim, got shape {tuple(sample.shape)}")
    tensors = {"eps_cond": eps_cond, "eps_uncond": eps_uncond, "prior_cond": prior_cond, "noise": noise}
    for name, t in tensors.items():
        if t is not None:
            _checks.tensor(name, t)
    _checks.same_shape("sample", sample, **tensors)
    _checks.same_dtype(sample=sample, **tensors)
    _checks.same_device(sample=sample, **tensors)
    _checks.choice("prediction_type", prediction_type, _kernels.PREDICTION_TYPES)
    guidance_scale, scales, frame_dim = _check_guidance_scale(guidance_scale, sample, frame_dim)
    prior_strength = _checks.finite_number("prior_strength", prior_strength)
    guidance_rescale = _checks.non_negative("guidance_rescale", guidance_rescale)
    eta = _checks.non_negative("eta", eta)
    euler = sigma is not None or sigma_next is not None
    if euler:
        if alpha_prod_t is not None or alpha_prod_prev is not None:
            raise ValueError("sigma, alpha_prod_t: give one step, DDIM's alphas or Euler's sigmas, not both")
        given = {"eta": eta > 0, "noise": noise is not None, "noise_kind": noise_kind is not None,
                 "clip_sample_range": clip_sample_range is not None,
                 "use_clipped_model_output": use_clipped_model_output, "inverse": inverse}
        refused = [name for name, is_set in given.items() if is_set]
        if refused:
            raise ValueError(f"{refused[0]}: a DDIM setting; the Euler step (sigma, sigma_next) takes none")
        rule = "euler"
        a_t, a_t_tensor = _check_level("sigma", sigma, sample, lambda v: 0.0 < v < float("inf"),
                                       "a finite noise level > 0")
        a_p, a_p_tensor = _check_level("sigma_next", sigma_next, sample, lambda v: 0.0 <= v < float("inf"),
                                       "a finite noise level >= 0")
    else:
        if alpha_prod_t is None or alpha_prod_prev is None:
            missing = "alpha_prod_t" if alpha_prod_t is None else "alpha_prod_prev"
            raise ValueError(f"{missing}: a step needs both noise levels: alpha_prod_t and alpha_prod_prev (DDIM), "
                             "or sigma and sigma_next (Euler)")
        rule = "ddim"
        alpha = "a cumulative alpha in (0, 1]"
        a_t, a_t_tensor = _check_level("alpha_prod_t", alpha_prod_t, sample, lambda v: 0.0 < v <= 1.0, alpha)
        a_p, a_p_tensor = _check_level("alpha_prod_prev", alpha_prod_prev, sample, lambda v: 0.0 < v <= 1.0, alpha)
    if clip_sample_range is not None:
        clip_sample_range = _checks.finite_number("clip_sample_range", clip_sample_range)
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range: expected a positive range or None, got {clip_sample_range}")
    batch = sample.shape[0]
    if guidance_rescale > 0 and eps_uncond is not None and sample.numel() // batch < 2:
        raise ValueError("guidance_rescale: the unbiased std needs at least 2 elements per video")
    if inverse and eta > 0:
        raise ValueError(f"eta: the DDIM inversion step is deterministic, expected eta=0 with inverse=True, got {eta}")
    seed_int, seeds = 0, None
    if eta > 0 and not inverse:
        if noise is not None and noise_kind is not None:
            raise ValueError("noise, noise_kind: give the noise tensor or a kind to draw it in-kernel, not both")
        if noise is None:
            if noise_kind is None:
                raise ValueError("noise_kind: eta > 0 needs noise, either a `noise` tensor or a `noise_kind` "
                                 f"({', '.join(_noise_kernels.KINDS)}) to draw it in the kernel")
            _checks.choice("noise_kind", noise_kind, _noise_kernels.KINDS)
            noise_alpha = _checks.non_negative("noise_alpha", noise_alpha)
            if sample.dim() < 3:
                raise ValueError(f"noise_kind: in-kernel noise needs frames on dim 2, got sample of shape "
                                 f"{tuple(sample.shape)}")
            seed_int, seeds = resolve_seed(seed, None, batch, 2, sample.device)
    else:
        noise, noise_kind = None, None
    if sample.device.type == "cuda" and batch > 65535:
        raise ValueError(f"sample: batch {batch} exceeds 65535 videos per call")
    contiguous = (lambda t: None if t is None else t.contiguous())  # noqa: E731
    out, x0 = _guided_step_op(
        sample.contiguous(), bool(return_pred_original), eps_cond.contiguous(), contiguous(eps_uncond),
        contiguous(prior_cond), contiguous(noise), seeds, a_t_tensor, a_p_tensor, scales, guidance_scale,
        prior_strength, guidance_rescale, frame_dim, rule, a_t, a_p, eta, prediction_type, clip_sample_range,
        bool(use_clipped_model_output), bool(inverse), noise_kind, float(noise_alpha), seed_int)
    return (out, x0) if return_pred_original else out
