"""Drop-in diffusers schedulers whose step runs the fused guidance op (:func:`vidgen.ops.guided_step`).

``FusedDDIMScheduler.from_config(pipe.scheduler.config)`` replaces a ``DDIMScheduler``: ``step()``
returns the same ``DDIMSchedulerOutput`` (same arithmetic, fp32, one pass), and
``guided_step()`` takes the un-combined predictions (conditional, unconditional, Video
Adapter prior) so a pipeline needs no separate guidance arithmetic. ``FusedDDIMInverseScheduler``
does the same for ``DDIMInverseScheduler`` (DDIM inversion), and ``FusedEulerDiscreteScheduler``
for ``EulerDiscreteScheduler`` (Stable Video Diffusion's sampler; its ``guided_step()`` takes a
guidance scale per frame, as SVD's pipeline guides).

Timesteps may be ints or tensors; a tensor timestep (one, or one per video) is looked up with
tensor ops on its own device, so a step on CUDA tensors never waits for the host and a captured
CUDA graph can replay it. ``set_timesteps(n, device=...)`` also copies the alpha table there.
"""
from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_ddim_inverse import DDIMSchedulerOutput as DDIMInverseSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops._fallback import warn_once
from ..ops.guidance import Guidance, compose_reference, guided_step as _guided_step
from ..ops.noise import DEFAULT_ALPHA, resolve_seed


class _AlphaLookup:
    """alpha_prod_t / alpha_prod_prev of a timestep: floats for host timesteps, device tensors otherwise."""

    # The attribute holding the cumulative alpha of an index past the schedule's end (diffusers'
    # final_alpha_cumprod when sampling, initial_alpha_cumprod when inverting).
    _edge_alpha: str

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """diffusers' ``set_timesteps``; with a ``device``, the alpha table is copied there now
        rather than in the first step (a copy to the device waits for the host)."""
        super().set_timesteps(num_inference_steps, device)
        if device is not None:
            self._alpha_table(self.timesteps.device)

    def _alpha_table(self, device: torch.device) -> torch.Tensor:
        """alphas_cumprod and the edge alpha (an out-of-range index's) after it, fp32, cached per device."""
        cache = self.__dict__.setdefault("_vidgen_alpha_tables", {})
        if device not in cache:
            edge = getattr(self, self._edge_alpha)
            table = torch.cat([self.alphas_cumprod.float(), edge.float().reshape(1)])
            cache[device] = table.to(device)
        return cache[device]

    def _require_steps(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        return self.config.num_train_timesteps // self.num_inference_steps

    def _levels(self, t, other, sample: torch.Tensor):
        """(alpha at index t, alpha at index ``other``, or the edge alpha when ``other`` < 0).

        A tensor timestep is looked up with tensor ops where it lives, whatever the device, so
        the lookup never reads a value on the host. One exception keeps diffusers pipelines
        free of copies: a single host timestep (a CPU ``scheduler.timesteps`` entry) stepping
        a sample on another device is read on the host, and its alphas go to the kernel by
        value. Both paths give the same fp32 alphas.
        """
        host_value = not isinstance(t, torch.Tensor) or (
            t.numel() == 1 and t.device.type == "cpu" and sample.device.type != "cpu")
        if host_value:
            t, other = int(t), int(other)
            edge = getattr(self, self._edge_alpha)
            a_t = float(self.alphas_cumprod[t]) if t >= 0 else float(edge)
            a_o = float(self.alphas_cumprod[other]) if other >= 0 else float(edge)
            return a_t, a_o
        table = self._alpha_table(t.device)
        return self._lookup(table, t).to(sample.device), self._lookup(table, other).to(sample.device)

    @staticmethod
    def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[index]``, the last entry (the edge value) for negative indices, shaped like ``index``.

        ``index_select`` with a 1-D index: indexing with a 0-d integer tensor would make
        PyTorch read the index on the host (``.item()``), a device sync on CUDA that also
        breaks CUDA-graph capture."""
        flat = torch.where(index >= 0, index, table.numel() - 1).long().reshape(-1)
        return table.index_select(0, flat).reshape(index.shape)


class FusedDDIMScheduler(_AlphaLookup, DDIMScheduler):
    """``DDIMScheduler`` whose step is one fused kernel (CFG and the Video Adapter prior optional).

    With :meth:`use_correlated_noise`, ``eta > 0`` steps draw their noise in the kernel (PYoCo
    correlated along the frame axis, dim 2) instead of reading a ``randn`` tensor.
    ``config.thresholding`` (a per-sample quantile) runs diffusers' own step after the fused
    guidance arithmetic.
    """

    _edge_alpha = "final_alpha_cumprod"
    noise_kind: str | None = None
    noise_alpha: float = 0.0

    def use_correlated_noise(self, kind: str | None, alpha: float | None = None) -> None:
        """Draw eta > 0 noise in the kernel as ``kind`` ("iid", "mixed", "progressive"); None: randn tensors."""
        self.noise_kind = kind
        self.noise_alpha = 0.0 if kind is None else (DEFAULT_ALPHA[kind] if alpha is None else float(alpha))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """``DDIMScheduler.step``, fused; same arguments and output."""
        return self.guided_step(model_output, timestep, sample, eta=eta,
                                use_clipped_model_output=use_clipped_model_output, generator=generator,
                                variance_noise=variance_noise, return_dict=return_dict)

    def guided_step(self, eps_cond: torch.Tensor, timestep, sample: torch.Tensor,
                    eps_uncond: torch.Tensor | None = None, prior_cond: torch.Tensor | None = None, *,
                    guidance_scale: float = 1.0, prior_strength: float = 0.0, guidance_rescale: float = 0.0,
                    eta: float = 0.0, use_clipped_model_output: bool = False,
                    generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
                    seed: int | torch.Tensor | None = None, return_dict: bool = True,
                    return_pred_original: bool = True):
        """Guidance + DDIM step from the un-combined model outputs.

        ``eps = eps_uncond + guidance_scale * (eps_cond + prior_strength * prior_cond - eps_uncond)``,
        rescaled by ``guidance_rescale`` as diffusers' ``rescale_noise_cfg``, then
        ``DDIMScheduler.step(eps, timestep, sample, eta, ...)``. With ``eta > 0`` and no
        ``variance_noise``, the noise is ``randn_tensor(generator=generator)`` as in diffusers, or
        drawn in the kernel after :meth:`use_correlated_noise` (from ``seed``, else a seed drawn
        from ``generator``). ``return_pred_original=False`` skips writing the predicted x0 (a
        sampling loop that never reads it saves one full-size write per step); it is then None.
        """
        step = self._require_steps()
        a_t, a_p = self._levels(timestep, timestep - step, sample)
        noise_kind = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            if variance_noise is None and self.noise_kind is not None:
                noise_kind = self.noise_kind
                if seed is None:
                    seed, _ = resolve_seed(None, generator, sample.shape[0], 2, sample.device)
            elif variance_noise is None:
                variance_noise = randn_tensor(eps_cond.shape, generator=generator, device=eps_cond.device,
                                              dtype=eps_cond.dtype)
        if self.config.thresholding:
            guidance = Guidance(guidance_scale, prior_strength, guidance_rescale)
            return self._thresholded_step(eps_cond, timestep, sample, eps_uncond, prior_cond, guidance, eta,
                                          use_clipped_model_output, variance_noise, return_dict)
        result = _guided_step(
            sample, eps_cond, eps_uncond, prior_cond, guidance_scale=guidance_scale, prior_strength=prior_strength,
            guidance_rescale=guidance_rescale, alpha_prod_t=a_t, alpha_prod_prev=a_p, eta=eta,
            noise=variance_noise, noise_kind=noise_kind, noise_alpha=self.noise_alpha, seed=seed,
            prediction_type=self.config.prediction_type,
            clip_sample_range=self.config.clip_sample_range if self.config.clip_sample else None,
            use_clipped_model_output=use_clipped_model_output, return_pred_original=return_pred_original)
        prev_sample, pred_original_sample = result if return_pred_original else (result, None)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _thresholded_step(self, eps_cond, timestep, sample, eps_uncond, prior_cond, guidance: Guidance, eta,
                          use_clipped_model_output, variance_noise, return_dict):
        """Dynamic thresholding needs a per-sample quantile of x0: compose here, step in diffusers."""
        model_output = compose_reference(eps_cond, eps_uncond, prior_cond, guidance)
        return DDIMScheduler.step(self, model_output, timestep, sample, eta=eta,
                                  use_clipped_model_output=use_clipped_model_output, variance_noise=variance_noise,
                                  return_dict=return_dict)


class FusedDDIMInverseScheduler(_AlphaLookup, DDIMInverseScheduler):
    """``DDIMInverseScheduler`` whose step is one fused kernel (e.g. Tune-A-Video's DDIM inversion)."""

    _edge_alpha = "initial_alpha_cumprod"

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """``DDIMInverseScheduler.step``, fused; same arguments and output."""
        return self.guided_step(model_output, timestep, sample, return_dict=return_dict)

    def guided_step(self, eps_cond: torch.Tensor, timestep, sample: torch.Tensor,
                    eps_uncond: torch.Tensor | None = None, prior_cond: torch.Tensor | None = None, *,
                    guidance_scale: float = 1.0, prior_strength: float = 0.0, guidance_rescale: float = 0.0,
                    return_dict: bool = True, return_pred_original: bool = True):
        """Guidance (optional, see :meth:`FusedDDIMScheduler.guided_step`) + one DDIM inversion step.

        As in diffusers, ``timestep`` is the noisier level reached (named ``alpha_prod_t_prev``)
        and the input sample sits at ``timestep - T / n`` (``initial_alpha_cumprod`` below 0).
        """
        step = self._require_steps()
        current = timestep - step
        current = (current.clamp(max=self.config.num_train_timesteps - 1) if isinstance(current, torch.Tensor)
                   else min(current, self.config.num_train_timesteps - 1))
        a_t, a_p = self._levels(current, timestep, sample)
        result = _guided_step(
            sample, eps_cond, eps_uncond, prior_cond, guidance_scale=guidance_scale, prior_strength=prior_strength,
            guidance_rescale=guidance_rescale, alpha_prod_t=a_t, alpha_prod_prev=a_p,
            prediction_type=self.config.prediction_type,
            clip_sample_range=self.config.clip_sample_range if self.config.clip_sample else None,
            inverse=True, return_pred_original=return_pred_original)
        next_sample, pred_original_sample = result if return_pred_original else (result, None)
        if not return_dict:
            return next_sample, pred_original_sample
        return DDIMInverseSchedulerOutput(prev_sample=next_sample, pred_original_sample=pred_original_sample)


# diffusers' Euler prediction types -> the fused step's ("original_sample" is another name for "sample")
_EULER_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample",
                      "original_sample": "sample"}


def euler_unsupported_reason(scheduler) -> str | None:
    """Why :class:`FusedEulerDiscreteScheduler` cannot stand in for ``scheduler``, or None."""
    if type(scheduler) is not EulerDiscreteScheduler:  # a subclass may change the step
        return f"the fused Euler step reproduces EulerDiscreteScheduler exactly, not {type(scheduler).__name__}"
    if scheduler.config.prediction_type not in _EULER_PREDICTIONS:
        return f"prediction_type {scheduler.config.prediction_type!r} is not one the fused Euler step computes"
    return None


class FusedEulerDiscreteScheduler(EulerDiscreteScheduler):
    """``EulerDiscreteScheduler`` whose step is one fused kernel (CFG with a per-frame scale optional).

    Everything but the step is diffusers' own (``set_timesteps``, Karras/exponential/beta sigmas,
    ``scale_model_input``, the ``step_index`` bookkeeping). The step reads sigma and the next
    sigma where the sample lives: ``set_timesteps(n, device=...)`` copies the sigma table there
    (diffusers keeps it on the CPU), and each step takes a view at its host ``step_index``, so a
    step on CUDA tensors never reads a device value on the host. ``s_churn > 0`` (noise from
    ``generator`` at sigmas in ``[s_tmin, s_tmax]``) and inputs the op does not take (differing
    dtypes or shapes, float64) run diffusers' own step, with a warning once.
    """

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None):
        """diffusers' ``set_timesteps``; with a ``device``, the sigma table is copied there now rather
        than in the first step (a copy to the device waits for the host)."""
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self.__dict__["_vidgen_sigma_tables"] = {}
        if device is not None:
            self._sigma_table(torch.device(device))

    def _sigma_table(self, device: torch.device) -> torch.Tensor:
        """The fp32 sigmas (the final 0 included), cached per device until the next ``set_timesteps``."""
        if device.type == "cpu":
            return self.sigmas
        cache = self.__dict__.setdefault("_vidgen_sigma_tables", {})
        if device not in cache:
            cache[device] = self.sigmas.to(device=device, dtype=torch.float32)
        return cache[device]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """``EulerDiscreteScheduler.step``, fused; same arguments and output (x0 in the sample's dtype)."""
        reason = self._unfusable(model_output, sample, s_churn)
        if reason is not None:
            warn_once("FusedEulerDiscreteScheduler.step", reason, "diffusers' EulerDiscreteScheduler.step")
            return super().step(model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                s_noise=s_noise, generator=generator, return_dict=return_dict)
        return self.guided_step(model_output, timestep, sample, return_dict=return_dict)

    @staticmethod
    def _unfusable(model_output: torch.Tensor, sample: torch.Tensor, s_churn: float) -> str | None:
        if s_churn > 0:
            return "s_churn > 0 adds the generator's noise"
        if model_output.dtype != sample.dtype or model_output.dtype not in (torch.float16, torch.bfloat16,
                                                                            torch.float32):
            return f"model_output is {model_output.dtype} and sample {sample.dtype}; the op takes one of fp16/bf16/fp32"
        if model_output.shape != sample.shape or model_output.device != sample.device:
            return "model_output and sample differ in shape or device"
        return None

    def guided_step(self, eps_cond: torch.Tensor, timestep, sample: torch.Tensor,
                    eps_uncond: torch.Tensor | None = None, *, guidance_scale: float | torch.Tensor = 1.0,
                    frame_dim: int = 1, guidance_rescale: float = 0.0, return_dict: bool = True,
                    return_pred_original: bool = True):
        """Guidance + one Euler step (``s_churn = 0``) from the un-combined model outputs.

        ``eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)`` (rescaled by
        ``guidance_rescale`` as diffusers' ``rescale_noise_cfg``), then
        ``EulerDiscreteScheduler.step(eps, timestep, sample)``. ``guidance_scale`` may be a 1-d tensor
        of one scale per frame along ``frame_dim`` (default 1: diffusers' SVD latents are
        (B, F, C, h, w)), on the sample's device: SVD's ``linspace(min, max, F)``.
        ``return_pred_original=False`` skips writing x0 (it is then None).
        """
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             "`EulerDiscreteScheduler.step()` is not supported. Make sure to pass one of the "
                             "`scheduler.timesteps` as a timestep.")
        if self.step_index is None:
            self._init_step_index(timestep)
        levels = self._sigma_table(sample.device).narrow(0, self.step_index, 2)  # a view: no value read
        result = _guided_step(sample, eps_cond, eps_uncond, guidance_scale=guidance_scale, frame_dim=frame_dim,
                              guidance_rescale=guidance_rescale, sigma=levels[0:1], sigma_next=levels[1:2],
                              prediction_type=_EULER_PREDICTIONS[self.config.prediction_type],
                              return_pred_original=return_pred_original)
        prev_sample, pred_original_sample = result if return_pred_original else (result, None)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
