"""FusedDDIMScheduler / FusedDDIMInverseScheduler are drop-ins for diffusers' DDIM schedulers."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

import vidgen
from vidgen.integration.schedulers import FusedDDIMInverseScheduler, FusedDDIMScheduler

SHAPE = (2, 4, 3, 5, 7)
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
            set_alpha_to_one=False, steps_offset=1)


def randn(device, seed, dtype=torch.float32):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def pair(config, steps=8, cls=DDIMScheduler, fused_cls=FusedDDIMScheduler):
    ours = cls(**config)
    fused = fused_cls.from_config(ours.config)
    for s in (ours, fused):
        s.set_timesteps(steps)
    return ours, fused


@pytest.mark.parametrize("config,eta", [
    (SD15, 0.0),
    (dict(SD15, prediction_type="v_prediction", clip_sample=True, set_alpha_to_one=True), 0.5),
    (dict(beta_schedule="linear", timestep_spacing="trailing"), 1.0),  # AnimateDiff-style linear betas
])
def test_step_matches_ddim_scheduler_over_a_trajectory(device, config, eta):
    ours, fused = pair(config)
    assert isinstance(fused, DDIMScheduler) and fused.config == ours.config
    x_ref = x = randn(device, 0)
    for i, t in enumerate(ours.timesteps):  # includes the last step (alpha_prod_prev = final_alpha_cumprod)
        eps = randn(device, 10 + i)
        expected = ours.step(eps, t, x_ref, eta=eta, generator=torch.Generator().manual_seed(i))
        got = fused.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(i))
        assert isinstance(got, DDIMSchedulerOutput)
        torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.pred_original_sample, expected.pred_original_sample, rtol=1e-4, atol=1e-4)
        x, x_ref = got.prev_sample, expected.prev_sample


def test_step_return_dict_false_and_variance_noise(device):
    ours, fused = pair(SD15)
    t = ours.timesteps[2]
    x, eps, z = randn(device, 0), randn(device, 1), randn(device, 2)
    expected = ours.step(eps, t, x, eta=0.8, variance_noise=z, return_dict=False)
    got = fused.step(eps, t, x, eta=0.8, variance_noise=z, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Cannot pass both generator and variance_noise"):
        fused.step(eps, t, x, eta=0.8, variance_noise=z, generator=torch.Generator())


def test_step_before_set_timesteps_is_refused(device):
    fused = FusedDDIMScheduler(**SD15)
    with pytest.raises(ValueError, match="set_timesteps"):
        fused.step(randn(device, 1), 1, randn(device, 0))


def test_guided_step_is_cfg_plus_step(device):
    ours, fused = pair(SD15)
    t = ours.timesteps[3]
    x, cond, uncond = randn(device, 0), randn(device, 1), randn(device, 2)
    expected = ours.step(uncond + 7.5 * (cond - uncond), t, x)
    got = fused.guided_step(cond, t, x, uncond, guidance_scale=7.5)
    torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-5, atol=1e-5)


def test_device_timestep_tensors_one_per_video(device):
    """A tensor timestep is looked up on the device; one timestep per video steps each video on its own."""
    ours, fused = pair(SD15)
    x, eps = randn(device, 0), randn(device, 1)
    t = torch.stack([ours.timesteps[1], ours.timesteps[-1]]).to(device)
    got = fused.step(eps, t, x).prev_sample
    for b in range(2):
        expected = ours.step(eps[b:b + 1].cpu(), int(t[b]), x[b:b + 1].cpu()).prev_sample
        torch.testing.assert_close(got[b:b + 1].cpu(), expected, rtol=1e-5, atol=1e-5)


def test_in_kernel_correlated_noise(device):
    _, fused = pair(SD15)
    fused.use_correlated_noise("progressive")
    t = fused.timesteps[2]
    x, eps = randn(device, 0), randn(device, 1)
    drawn = fused.guided_step(eps, t, x, eta=1.0, seed=4)
    noise = vidgen.ops.correlated_noise(SHAPE, kind="progressive", alpha=2.0, seed=4, device=device)
    given = FusedDDIMScheduler.from_config(fused.config)
    given.set_timesteps(8)
    torch.testing.assert_close(drawn.prev_sample, given.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample,
                               rtol=1e-6, atol=1e-6)


def test_thresholding_falls_back_to_diffusers(device):
    config = dict(SD15, thresholding=True, sample_max_value=1.2)
    ours, fused = pair(config)
    t = ours.timesteps[4]
    x, cond, uncond = randn(device, 0) * 3, randn(device, 1), randn(device, 2)
    expected = ours.step(uncond + 2.0 * (cond - uncond), t, x)
    got = fused.guided_step(cond, t, x, uncond, guidance_scale=2.0)
    torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_inverse_scheduler_matches_ddim_inverse(device, set_alpha_to_one):
    config = dict(SD15, set_alpha_to_one=set_alpha_to_one, clip_sample=True)
    ours, fused = pair(config, steps=5, cls=DDIMInverseScheduler, fused_cls=FusedDDIMInverseScheduler)
    assert isinstance(fused, DDIMInverseScheduler)
    x_ref = x = randn(device, 0)
    for i, t in enumerate(ours.timesteps):  # the first step reads initial_alpha_cumprod
        eps = randn(device, 20 + i)
        expected = ours.step(eps, t, x_ref)
        got = fused.step(eps, t, x)
        torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.pred_original_sample, expected.pred_original_sample, rtol=1e-4, atol=1e-4)
        x, x_ref = got.prev_sample, expected.prev_sample
    t = torch.tensor(int(ours.timesteps[0]), device=device)  # device timestep through initial_alpha_cumprod
    torch.testing.assert_close(fused.step(eps, t, x).prev_sample, ours.step(eps, int(t), x).prev_sample,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,fused_cls", [(DDIMScheduler, FusedDDIMScheduler),
                                           (DDIMInverseScheduler, FusedDDIMInverseScheduler)])
def test_tensor_timesteps_step_bit_identically_to_ints(device, cls, fused_cls):
    """An int timestep is looked up on the host, a tensor one with tensor ops on its device (a CPU
    0-d tensor with a CUDA sample: on the host, as diffusers pipelines pass it): the same fp32
    alphas, so the same bits, at every timestep (the first inversion step reads the edge alpha)."""
    _, fused = pair(SD15, steps=4, cls=cls, fused_cls=fused_cls)
    x, eps = randn(device, 0), randn(device, 1)
    for t in fused.timesteps:
        by_int = fused.step(eps, int(t), x).prev_sample
        for timestep in (t, t.to(device), t.to(device).reshape(1), t.to(device).expand(SHAPE[0])):
            assert torch.equal(fused.step(eps, timestep, x).prev_sample, by_int), (int(t), timestep)
