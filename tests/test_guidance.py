"""vidgen.ops.guided_step against diffusers itself (CFG + rescale_noise_cfg + DDIM(Inverse)Scheduler.step,
and SVD's per-frame CFG + EulerDiscreteScheduler.step).

Every comparison runs the op twice: through the default backend (Triton's interpreter on CPU,
compiled kernels with VIDGEN_TEST_DEVICE=cuda) and through the PyTorch reference
(``use_backend("torch")``). diffusers runs in float64 on the same inputs.
"""
import contextlib

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, EulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

import vidgen
from vidgen.kernels.guidance import DDIMStep, EulerStep, Guidance, compose_reference, guided_step_reference
from vidgen.ops import BackendUnavailable, guided_step, use_backend

SHAPE = (2, 3, 5, 6, 7)  # (B, C, F, h, w): odd sizes, 5 frames = one full Philox group + one partial
BACKENDS = ("default", "torch")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def backend(name):
    return contextlib.nullcontext() if name == "default" else use_backend(name)


def randn(device, dtype=torch.float32, shape=SHAPE, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def assert_close(actual, expected, dtype=torch.float32):
    tol = TOLERANCE[dtype]
    expected = expected.double().cpu()
    err = (actual.double().cpu() - expected).abs().max().item()
    assert err <= tol * (1 + expected.abs().max().item()), f"max abs error {err}"


def ddim(prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps=10, **kwargs):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=1.5,
                              set_alpha_to_one=set_alpha_to_one, steps_offset=1, **kwargs)
    scheduler.set_timesteps(steps)
    return scheduler


def levels(scheduler, t):
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_p = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    return float(scheduler.alphas_cumprod[t]), float(a_p)


# prediction type, eta (> 0: with a given noise tensor), clipping, set_alpha_to_one, step index
DDIM_CASES = [
    ("epsilon", 0.0, False, True, 3),
    ("epsilon", 0.7, True, False, -1),      # last step: alpha_prod_prev = alphas_cumprod[0]
    ("epsilon", 0.0, False, True, -1),      # last step: alpha_prod_prev = 1
    ("v_prediction", 0.0, True, True, 0),
    ("v_prediction", 1.0, False, False, 5),
    ("sample", 0.3, True, True, 7),
]


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("prediction_type,eta,clip,set_alpha_to_one,index", DDIM_CASES)
def test_cfg_and_ddim_step_match_diffusers(device, which, prediction_type, eta, clip, set_alpha_to_one, index):
    scheduler = ddim(prediction_type, clip, set_alpha_to_one)
    t = int(scheduler.timesteps[index])
    x, cond, uncond, z = (randn(device, seed=s) for s in range(4))
    w = 6.5
    guided = uncond.double() + w * (cond.double() - uncond.double())  # diffusers pipelines' CFG line
    expected = scheduler.step(guided.cpu(), t, x.double().cpu(), eta=eta, variance_noise=z.double().cpu())
    a_t, a_p = levels(scheduler, t)
    with backend(which):
        out, x0 = guided_step(x, cond, uncond, guidance_scale=w, alpha_prod_t=a_t, alpha_prod_prev=a_p, eta=eta,
                              noise=z if eta > 0 else None, prediction_type=prediction_type,
                              clip_sample_range=1.5 if clip else None, return_pred_original=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_close(out, expected.prev_sample)
    assert_close(x0, expected.pred_original_sample)


@pytest.mark.parametrize("which", BACKENDS)
def test_use_clipped_model_output_matches_diffusers(device, which):
    scheduler = ddim("v_prediction", clip_sample=True)
    t = int(scheduler.timesteps[8])
    x, cond = randn(device, seed=1) * 3, randn(device, seed=2)
    expected = scheduler.step(cond.double().cpu(), t, x.double().cpu(), use_clipped_model_output=True)
    a_t, a_p = levels(scheduler, t)
    with backend(which):
        out = guided_step(x, cond, alpha_prod_t=a_t, alpha_prod_prev=a_p, prediction_type="v_prediction",
                          clip_sample_range=1.5, use_clipped_model_output=True)
    assert_close(out, expected.prev_sample)


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_guidance_rescale_matches_diffusers(device, which, dtype):
    scheduler = ddim()
    t = int(scheduler.timesteps[2])
    x, cond, uncond = (randn(device, dtype, seed=s) for s in range(3))
    cond = cond * 0.5 + 0.3  # different std and mean from uncond: the rescale factor is far from 1
    w, phi = 7.5, 0.7
    c64, u64 = cond.double().cpu(), uncond.double().cpu()
    guided = rescale_noise_cfg(u64 + w * (c64 - u64), c64, guidance_rescale=phi)
    expected = scheduler.step(guided, t, x.double().cpu()).prev_sample
    a_t, a_p = levels(scheduler, t)
    with backend(which):
        out = guided_step(x, cond, uncond, guidance_scale=w, guidance_rescale=phi, alpha_prod_t=a_t,
                          alpha_prod_prev=a_p)
    assert out.dtype == dtype
    assert_close(out, expected, dtype)


def test_rescale_statistics_keep_precision_with_a_large_mean(device):
    """Shifted sums: a mean 300x the std must not cancel the variance away in fp32."""
    x, cond, uncond = randn(device, seed=0), randn(device, seed=1) + 300.0, randn(device, seed=2) * 2 + 300.0
    c64, u64 = cond.double().cpu(), uncond.double().cpu()
    expected_eps = rescale_noise_cfg(u64 + 3.0 * (c64 - u64), c64, guidance_rescale=1.0)
    _, x0 = guided_step(x, cond, uncond, guidance_scale=3.0, guidance_rescale=1.0, alpha_prod_t=0.5,
                        alpha_prod_prev=0.6, prediction_type="sample", return_pred_original=True)
    assert_close(x0, expected_eps)  # x0-prediction: the predicted x0 is the rescaled guided output


@pytest.mark.parametrize("which", BACKENDS)
def test_video_adapter_composition_written_out(device, which):
    x, small_c, small_u, prior_c = (randn(device, seed=s) for s in range(4))
    lam, w, a_t, a_p = 0.1, 2.5, 0.3, 0.45
    eps_text = small_c.double() + lam * prior_c.double()
    eps = small_u.double() + w * (eps_text - small_u.double())
    x0 = (x.double() - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    expected = a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps
    with backend(which):
        out = guided_step(x, small_c, small_u, prior_c, guidance_scale=w, prior_strength=lam, alpha_prod_t=a_t,
                          alpha_prod_prev=a_p)
        no_guidance = guided_step(x, small_c, None, prior_c, prior_strength=lam, alpha_prod_t=a_t,
                                  alpha_prod_prev=a_p)
    assert_close(out, expected)
    x0_text = (x.double() - (1 - a_t) ** 0.5 * eps_text) / a_t**0.5
    assert_close(no_guidance, a_p**0.5 * x0_text + (1 - a_p) ** 0.5 * eps_text)


@pytest.mark.parametrize("which", BACKENDS)
def test_ddim_inverse_step_matches_diffusers(device, which):
    inverse = DDIMInverseScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   set_alpha_to_one=False, steps_offset=1, clip_sample=True, clip_sample_range=1.0)
    inverse.set_timesteps(10)
    x, cond = randn(device, seed=5), randn(device, seed=6)
    for t in (int(inverse.timesteps[0]), int(inverse.timesteps[4])):
        expected = inverse.step(cond.double().cpu(), t, x.double().cpu()).prev_sample
        current = min(t - 100, 999)
        a_t = float(inverse.alphas_cumprod[current]) if current >= 0 else float(inverse.initial_alpha_cumprod)
        with backend(which):
            out = guided_step(x, cond, alpha_prod_t=a_t, alpha_prod_prev=float(inverse.alphas_cumprod[t]),
                              clip_sample_range=1.0, inverse=True)
        assert_close(out, expected)


# ---- Stable Video Diffusion: per-frame CFG + Euler ------------------------------------------------
SVD_SHAPE = (2, 5, 3, 4, 7)  # diffusers' SVD latents (B, F, C, h, w): frames on dim 1


def euler(prediction_type="v_prediction", steps=6):
    """SVD's scheduler (diffusers' SVD pipeline test components): v-prediction on Karras sigmas."""
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type=prediction_type, sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    return scheduler


def svd_guidance(frames, device, low=1.0, high=3.0):
    return torch.linspace(low, high, frames, device=device)  # the pipeline's per-frame scale


def diffusers_euler_step(scheduler, index, guided, x):
    """diffusers' own step at ``index`` (float64 inputs; the step itself computes in fp32)."""
    t = scheduler.timesteps[index]
    scheduler.set_begin_index(index)  # an epsilon schedule's timesteps may repeat: name the step
    scheduler.scale_model_input(x, t)  # sets the step index, as the pipeline does before each step
    return scheduler.step(guided, t, x)


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("prediction_type,index,dtype", [
    ("v_prediction", 0, torch.float32),   # sigma = 700: x of order 700
    ("v_prediction", -1, torch.float32),  # last step: sigma_next = 0, out = x0
    pytest.param("epsilon", 2, torch.float32, marks=pytest.mark.slow),
    pytest.param("sample", 3, torch.float32, marks=pytest.mark.slow),
    ("v_prediction", 2, torch.float16),
    pytest.param("v_prediction", 4, torch.bfloat16, marks=pytest.mark.slow),
])
def test_per_frame_cfg_and_euler_step_match_diffusers(device, which, prediction_type, index, dtype):
    scheduler = euler(prediction_type)
    index = index % len(scheduler.timesteps)
    sigma, sigma_next = float(scheduler.sigmas[index]), float(scheduler.sigmas[index + 1])
    x = randn(device, dtype, SVD_SHAPE, seed=0) * (sigma**2 + 1) ** 0.5
    cond, uncond = randn(device, dtype, SVD_SHAPE, seed=1), randn(device, dtype, SVD_SHAPE, seed=2)
    w = svd_guidance(SVD_SHAPE[1], device)
    c64, u64 = cond.double().cpu(), uncond.double().cpu()
    guided = u64 + w.double().cpu()[None, :, None, None, None] * (c64 - u64)  # the SVD pipeline's CFG line
    expected = diffusers_euler_step(scheduler, index, guided, x.double().cpu())
    with backend(which):
        out, x0 = guided_step(x, cond, uncond, guidance_scale=w, frame_dim=1, sigma=sigma, sigma_next=sigma_next,
                              prediction_type=prediction_type, return_pred_original=True)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, expected.prev_sample, dtype)
    assert_close(x0, expected.pred_original_sample, dtype)


@pytest.mark.parametrize("which", [pytest.param("default", marks=pytest.mark.slow), "torch"])  # interpreter: 8-15 s
def test_per_frame_scale_with_rescale_and_prior_matches_the_reference(device, which):
    """A per-frame scale in the rescale reduction too, on the default frame axis (dim 2), with a DDIM step."""
    x, cond, uncond, prior = (randn(device, seed=s) for s in range(4))
    w = torch.tensor([1.0, 2.5, 4.0, 5.5, 7.0], device=device)
    guidance = Guidance(scale=w, prior_strength=0.3, rescale=0.6)
    ref, ref_x0 = guided_step_reference(x.double(), cond.double(), uncond.double(), prior.double(), guidance,
                                        DDIMStep(0.3, 0.5))
    c64, u64, p64 = cond.double(), uncond.double(), prior.double()
    for f in range(5):  # the reference guides frame f with w[f]
        torch.testing.assert_close(compose_reference(c64, u64, p64, Guidance(w.double(), 0.3))[:, :, f],
                                   (u64 + float(w[f]) * (c64 + 0.3 * p64 - u64))[:, :, f])
    with backend(which):
        out, x0 = guided_step(x, cond, uncond, prior, guidance_scale=w, prior_strength=0.3, guidance_rescale=0.6,
                              alpha_prod_t=0.3, alpha_prod_prev=0.5, return_pred_original=True)
    assert_close(out, ref)
    assert_close(x0, ref_x0)


@pytest.mark.parametrize("which", BACKENDS)
def test_per_video_sigma_tensors_match_per_video_floats(device, which):
    x, cond, uncond = (randn(device, shape=SVD_SHAPE, seed=s) for s in range(3))
    sigma, sigma_next = torch.tensor([9.0, 2.5], device=device), torch.tensor(1.25, device=device)
    w = svd_guidance(SVD_SHAPE[1], device)
    with backend(which):
        out = guided_step(x, cond, uncond, guidance_scale=w, frame_dim=1, sigma=sigma, sigma_next=sigma_next,
                          prediction_type="v_prediction")
        for b, s in enumerate((9.0, 2.5)):
            alone = guided_step(x[b:b + 1], cond[b:b + 1], uncond[b:b + 1], guidance_scale=w, frame_dim=1, sigma=s,
                                sigma_next=1.25, prediction_type="v_prediction")
            assert torch.equal(out[b:b + 1], alone)


def test_low_precision_euler_against_float64_reference(device):
    for dtype in (torch.float16, torch.bfloat16):
        x, cond, uncond = (randn(device, dtype, shape=(3, 7, 4, 3, 5), seed=s) for s in range(3))
        w = svd_guidance(7, device, 1.0, 2.5)
        out = guided_step(x, cond, uncond, guidance_scale=w, frame_dim=1, sigma=3.0, sigma_next=1.7,
                          prediction_type="v_prediction")
        ref, _ = guided_step_reference(x.double(), cond.double(), uncond.double(), None,
                                       Guidance(w.double(), frame_dim=1), EulerStep(3.0, 1.7, "v_prediction"))
        assert out.dtype == dtype
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("which", BACKENDS)
def test_per_video_alpha_tensors_match_per_video_floats(device, which):
    x, cond, uncond = (randn(device, seed=s) for s in range(3))
    a_t, a_p = torch.tensor([0.2, 0.6], device=device), torch.tensor(0.8, device=device)
    with backend(which):
        out = guided_step(x, cond, uncond, guidance_scale=4.0, alpha_prod_t=a_t, alpha_prod_prev=a_p)
        for b in range(2):
            alone = guided_step(x[b:b + 1], cond[b:b + 1], uncond[b:b + 1], guidance_scale=4.0,
                                alpha_prod_t=float(a_t[b]), alpha_prod_prev=0.8)
            assert torch.equal(out[b:b + 1], alone)


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("kind,alpha,seed", [("iid", 0.0, 7), ("mixed", 1.0, 2**40 + 3), ("progressive", 2.0, 11)])
def test_in_kernel_noise_is_correlated_noise(device, which, kind, alpha, seed):
    """eta > 0 without a noise tensor draws exactly vidgen.ops.correlated_noise(seed) in the kernel."""
    x, cond = randn(device, seed=1), randn(device, seed=2)
    args = dict(alpha_prod_t=0.35, alpha_prod_prev=0.5, eta=0.8)
    with backend(which):
        drawn = guided_step(x, cond, noise_kind=kind, noise_alpha=alpha, seed=seed, **args)
        noise = vidgen.ops.correlated_noise(x.shape, kind=kind, alpha=alpha, seed=seed, device=device)
        given = guided_step(x, cond, noise=noise, **args)
    torch.testing.assert_close(drawn, given, rtol=1e-6, atol=1e-6)
    assert not torch.equal(drawn, guided_step(x, cond, alpha_prod_t=0.35, alpha_prod_prev=0.5))


@pytest.mark.parametrize("kind,alpha", [("iid", 0.0), ("mixed", 1.0), ("progressive", 2.0)])
def test_triton_in_kernel_noise_is_the_noise_kernels_stream_bit_for_bit(device, kind, alpha):
    """The Triton step draws with the noise kernel's own stream helpers (kernels/noise.py): the same bits."""
    x, cond = randn(device, shape=(2, 3, 9, 4, 5), seed=1), randn(device, shape=(2, 3, 9, 4, 5), seed=2)
    args = dict(alpha_prod_t=0.35, alpha_prod_prev=0.5, eta=0.8)
    with use_backend("triton"):
        drawn = guided_step(x, cond, noise_kind=kind, noise_alpha=alpha, seed=2**40 + 3, **args)
        noise = vidgen.ops.correlated_noise(x.shape, kind=kind, alpha=alpha, seed=2**40 + 3, device=device)
        assert torch.equal(drawn, guided_step(x, cond, noise=noise, **args))


def test_in_kernel_noise_with_one_seed_per_video(device):
    x, cond = randn(device, seed=1), randn(device, seed=2)
    seeds = torch.tensor([5, 9], device=device)
    drawn = guided_step(x, cond, alpha_prod_t=0.35, alpha_prod_prev=0.5, eta=1.0, noise_kind="progressive",
                        noise_alpha=2.0, seed=seeds)
    noise = vidgen.ops.correlated_noise(x.shape, kind="progressive", alpha=2.0, seed=seeds, device=device)
    given = guided_step(x, cond, alpha_prod_t=0.35, alpha_prod_prev=0.5, eta=1.0, noise=noise)
    torch.testing.assert_close(drawn, given, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_against_float64_reference(device, dtype):
    """fp16/bf16 tensors, fp32 math: error of the order of one rounding of the output."""
    x, cond, uncond, prior, z = (randn(device, dtype, shape=(3, 4, 3, 5, 9), seed=s) for s in range(5))
    args = dict(guidance_scale=3.0, prior_strength=0.2, alpha_prod_t=0.25, alpha_prod_prev=0.4, eta=0.5,
                prediction_type="v_prediction", clip_sample_range=2.0)
    out, x0 = guided_step(x, cond, uncond, prior, noise=z, return_pred_original=True, **args)
    ref, ref_x0 = guided_step_reference(x.double(), cond.double(), uncond.double(), prior.double(),
                                        Guidance(scale=3.0, prior_strength=0.2, rescale=0.0),
                                        DDIMStep(0.25, 0.4, eta=0.5, prediction_type="v_prediction",
                                                 clip_sample_range=2.0), z.double())
    assert out.dtype == dtype and x0.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(x0, ref_x0, dtype)


def test_non_contiguous_inputs(device):
    x, cond = randn(device, seed=1).transpose(3, 4), randn(device, seed=2).transpose(3, 4)
    out = guided_step(x, cond, alpha_prod_t=0.5, alpha_prod_prev=0.7)
    expected = guided_step(x.contiguous(), cond.contiguous(), alpha_prod_t=0.5, alpha_prod_prev=0.7)
    assert torch.equal(out, expected)


def test_traces_under_torch_compile(device):
    x, cond, uncond = (randn(device, seed=s) for s in range(3))
    a_t = torch.tensor([0.3, 0.4], device=device)

    def step(x, cond, uncond, a_t):
        return guided_step(x, cond, uncond, guidance_scale=5.0, alpha_prod_t=a_t, alpha_prod_prev=a_t + 0.1)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, cond, uncond, a_t), step(x, cond, uncond, a_t))


def test_custom_op_registration_passes_opcheck(device):
    x, cond, uncond = (randn(device, seed=s) for s in range(3))
    a_t = torch.tensor([0.3, 0.4], device=device)
    # the schema's order: sample, return_pred_original, tensors, then the settings (see vidgen/ops/guidance.py)
    torch.library.opcheck(torch.ops.vidgen.guided_step.default,
                          (x, True, cond, uncond, None, None, None, a_t, None, None, 5.0, 0.0, 0.5, 2, "ddim", 0.0, 0.6,
                           0.0, "epsilon", None, False, False, None, 0.0, 0))
    sigmas, scales = torch.tensor([3.0, 1.5], device=device), torch.linspace(1.0, 3.0, SHAPE[2], device=device)
    torch.library.opcheck(torch.ops.vidgen.guided_step.default,  # Euler, one guidance scale per frame
                          (x, False, cond, uncond, None, None, None, sigmas[:1], sigmas[1:], scales, 0.0, 0.0, 0.0,
                           2, "euler", 0.0, 0.0, 0.0, "v_prediction", None, False, False, None, 0.0, 0))


# ---- bad input -----------------------------------------------------------------------------------
def bad_call(device, **overrides):
    x, cond = randn(device, seed=0), randn(device, seed=1)
    args = dict(sample=x, eps_cond=cond, alpha_prod_t=0.5, alpha_prod_prev=0.6)
    for name, value in overrides.items():
        args[name] = randn(device, seed=9) if isinstance(value, str) and value == "valid tensor" else value
    return guided_step(**args)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(eps_uncond=torch.randn(2, 3, 5, 6, 8)), ValueError, r"eps_uncond: expected shape \(2, 3, 5, 6, 7\)"),
    (dict(prior_cond=torch.randn(SHAPE, dtype=torch.float16)), TypeError, "share one dtype.*prior_cond"),
    (dict(eps_cond=torch.randn(SHAPE, dtype=torch.float64)), TypeError, "eps_cond: expected dtype"),
    (dict(eps_cond=torch.randn(SHAPE, device="meta")), ValueError, "one device.*eps_cond on meta"),
    (dict(prediction_type="flow"), ValueError, "prediction_type: expected one of"),
    (dict(eta=0.5), ValueError, "noise_kind: eta > 0 needs noise"),
    (dict(eta=0.5, noise_kind="pink"), ValueError, "noise_kind: expected one of"),
    (dict(eta=0.5, noise_kind="iid", noise="valid tensor"), ValueError, "not both"),
    (dict(eta=0.5, inverse=True, noise_kind="iid"), ValueError, "eta: the DDIM inversion step is deterministic"),
    (dict(eta=-1.0), ValueError, "eta: expected a finite value >= 0"),
    (dict(alpha_prod_t=1.5), ValueError, r"alpha_prod_t: expected a cumulative alpha in \(0, 1\]"),
    (dict(alpha_prod_prev=torch.ones(3)), ValueError, "alpha_prod_prev: expected a float, or a 0-d/1-d"),
    (dict(alpha_prod_t="0.5"), TypeError, "alpha_prod_t: expected a float or a tensor"),
    (dict(clip_sample_range=0.0), ValueError, "clip_sample_range: expected a positive range"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale: expected a finite number"),
    (dict(sample=torch.randn(2, 3)[:, :0]), ValueError, "sample: expected a non-empty tensor"),
    (dict(eta=0.5, noise_kind="iid", seed=torch.tensor([1, 2, 3])), ValueError, "seed: expected one seed per video"),
    (dict(sigma=2.0, sigma_next=1.0), ValueError, "sigma, alpha_prod_t: give one step"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None), ValueError, "alpha_prod_t: a step needs both noise levels"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None, sigma=0.0, sigma_next=0.0), ValueError,
     "sigma: expected a finite noise level > 0"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None, sigma=2.0, sigma_next=-1.0), ValueError,
     "sigma_next: expected a finite noise level >= 0"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None, sigma=2.0, sigma_next=1.0, eta=0.5, noise_kind="iid"), ValueError,
     "eta: a DDIM setting; the Euler step"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None, sigma=2.0, sigma_next=1.0, clip_sample_range=1.0), ValueError,
     "clip_sample_range: a DDIM setting"),
    (dict(alpha_prod_t=None, alpha_prod_prev=None, sigma=2.0, sigma_next=1.0, inverse=True), ValueError,
     "inverse: a DDIM setting"),
    (dict(guidance_scale=torch.ones(4)), ValueError, r"guidance_scale: expected a float, or a 1-d float tensor of one "
                                                     r"scale per frame \(5 along frame_dim=2\)"),
    (dict(guidance_scale=torch.ones(5, 1)), ValueError, "guidance_scale: expected a float, or a 1-d float tensor"),
    (dict(guidance_scale=torch.ones(2), frame_dim=0), ValueError, "frame_dim: dim 0 is the batch of videos"),
    (dict(guidance_scale=torch.ones(2), frame_dim=5), ValueError, "frame_dim=5 is out of range for a 5-D shape"),
    (dict(guidance_scale=torch.ones(5, device="meta")), ValueError, "guidance_scale: expected a tensor on"),
])
def test_bad_input_is_refused_with_a_clear_error(device, overrides, error, match):
    with pytest.raises(error, match=match):
        bad_call(device, **overrides)


def test_in_kernel_noise_needs_a_frame_axis(device):
    with pytest.raises(ValueError, match="noise_kind: in-kernel noise needs frames on dim 2"):
        guided_step(randn(device, shape=(2, 9)), randn(device, shape=(2, 9), seed=1), alpha_prod_t=0.5,
                    alpha_prod_prev=0.6, eta=1.0, noise_kind="iid", seed=1)


def test_forced_cuda_backend_on_cpu_tensors_is_refused():
    x = torch.randn(2, 3)
    with use_backend("cuda"), pytest.raises(BackendUnavailable, match="cuda cannot run guided_step"):
        guided_step(x, x.clone(), alpha_prod_t=0.5, alpha_prod_prev=0.6)


def test_a_per_frame_scale_past_32_bit_offsets_is_refused_before_any_launch():
    # Its kernels are compiled for 32-bit offsets only; stride-0 views stand in for 2**31 elements.
    huge = torch.zeros(1).expand(1, 4, 2, 2**14, 2**14)
    with pytest.raises(ValueError, match=r"guidance_scale: a per-frame scale serves samples of fewer than \d+ "
                                         r"elements, got 2147483648"):
        guided_step(huge, huge, huge, guidance_scale=torch.ones(2), sigma=1.0, sigma_next=0.5)
