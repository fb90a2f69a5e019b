"""Samplers: DDIM inversion and guided DDIM against loops written from diffusers' schedulers and
the Video Adapter formula (METHODS.md sections 4-6), inversion then reconstruction, and the whole
path on a tiny random-weight SD folder loaded the way the CLI loads a model."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

import vidgen
from vidgen import default_model
from vidgen.models import VideoUNet
from vidgen.sampling import VideoModel, decode_latents, denoise, initial_noise, invert, sample_video

SD15 = default_model.SD15_SCHEDULER


def tiny_video_unet(seed: int) -> VideoUNet:
    torch.manual_seed(seed)
    unet = vidgen.inflate(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "attn_temp.to_out" in name:
                param.normal_(0, 0.2)
    return unet.eval()


def inputs(videos=1, frames=3, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(videos, 4, frames, size, size, generator=gen)
    cond, uncond = torch.randn(2, videos, 5, 32, generator=gen)
    return latents, cond, uncond


def predict(unet, x, t, text):
    with torch.no_grad():
        return unet(x, t, text).sample


def diffusers_loop(scheduler, steps: int, latents, eps_of, step_kwargs=lambda i: {}):
    """The loop a diffusers pipeline runs: ``scheduler.step(eps_of(x, t), t, x)`` at every timestep,
    every prediction on the PyTorch reference path."""
    scheduler.set_timesteps(steps)
    x = latents.clone()
    with vidgen.ops.use_backend("torch"):
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(eps_of(x, t), t, x, **step_kwargs(i)).prev_sample
    return x


# ----------------------------------------------------------------------------------------------
def test_invert_matches_diffusers_inverse_scheduler_loop():
    unet = tiny_video_unet(0)
    latents, cond, _ = inputs(size=4)
    scheduler = DDIMScheduler(**SD15)
    expected = diffusers_loop(DDIMInverseScheduler(**SD15), 4, latents, lambda x, t: predict(unet, x, t, cond))
    with vidgen.ops.use_backend("torch"):
        got = invert(unet, latents, cond, scheduler=scheduler, num_inference_steps=4, progress=False)
    assert not torch.allclose(expected, latents, atol=0.1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_video_adapter_composition_matches_formula():
    small, prior = tiny_video_unet(1), tiny_video_unet(2)
    latents, cond, uncond = inputs(videos=2, size=4)
    w, lam = 2.5, 0.3

    def composed_eps(x, t):
        eps_s_c, eps_s_u = predict(small, x, t, cond), predict(small, x, t, uncond)
        eps_text = eps_s_c + lam * predict(prior, x, t, cond)
        return eps_s_u + w * (eps_text - eps_s_u)

    reference = DDIMScheduler(**SD15)
    expected = diffusers_loop(reference, 3, latents, composed_eps)
    with vidgen.ops.use_backend("torch"):
        got = denoise(small, latents, cond, uncond, scheduler=reference, num_inference_steps=3, guidance_scale=w,
                      prior=prior, prior_strength=lam, progress=False)
        plain_cfg = denoise(small, latents, cond, uncond, scheduler=reference, num_inference_steps=3,
                            guidance_scale=w, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (plain_cfg - expected).abs().max() > 1e-3  # the prior term matters


def test_rescaled_guidance_and_correlated_eta_noise_match_diffusers():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    unet = tiny_video_unet(10)
    latents, cond, uncond = inputs(size=4)

    def rescaled_cfg(x, t):
        eps_c, eps_u = predict(unet, x, t, cond), predict(unet, x, t, uncond)
        return rescale_noise_cfg(eps_u + 5.0 * (eps_c - eps_u), eps_c, guidance_rescale=0.7)

    def correlated_eta_noise(i):
        noise = vidgen.ops.correlated_noise((1, 3, 4, 4, 4), kind="mixed", alpha=1.0, frame_dim=1, seed=11 + i)
        return {"eta": 0.5, "variance_noise": noise.transpose(1, 2)}

    reference = DDIMScheduler(**SD15)
    expected = diffusers_loop(reference, 2, latents, rescaled_cfg, correlated_eta_noise)
    with vidgen.ops.use_backend("torch"):
        got = denoise(unet, latents, cond, uncond, scheduler=reference, num_inference_steps=2, guidance_scale=5.0,
                      guidance_rescale=0.7, eta=0.5, noise="mixed", noise_alpha=1.0, seed=11, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_guided_sampling_triton_path():
    # vidgen's Triton kernels (frame, temporal attention, fused step) through the interpreter.
    unet = tiny_video_unet(3)
    latents, cond, uncond = inputs(size=4)

    def cfg(x, t):
        eps_c, eps_u = predict(unet, x, t, cond), predict(unet, x, t, uncond)
        return eps_u + 4.0 * (eps_c - eps_u)

    reference = DDIMScheduler(**SD15)
    expected = diffusers_loop(reference, 2, latents, cfg)
    got = denoise(unet, latents, cond, uncond, scheduler=reference, num_inference_steps=2, guidance_scale=4.0,
                  progress=False)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


def test_inversion_then_reconstruction():
    # DDIM inversion is exact when the prediction does not change between the two ends of a
    # step; a random-weight UNet's does change a lot, so its output is scaled down (every layer
    # still runs). Sampling from the inverted latent with the same conditioning and no guidance
    # must then give the source back.
    unet = tiny_video_unet(4)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.02)
        unet.conv_out.bias.mul_(0.02)
    latents, cond, _ = inputs(size=4)
    scheduler = DDIMScheduler(**SD15)
    with vidgen.ops.use_backend("torch"):
        noisy = invert(unet, latents, cond, scheduler=scheduler, num_inference_steps=6, progress=False)
        back = denoise(unet, noisy, cond, None, scheduler=scheduler, num_inference_steps=6, progress=False)
    assert (noisy - latents).norm() > 0.3 * latents.norm()
    assert (back - latents).norm() < 1e-2 * latents.norm()


def test_motion_unet_is_a_sampler_unet():
    torch.manual_seed(5)
    unet2d = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=2,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=8, motion_max_seq_length=8)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    latents, cond, uncond = inputs(size=4)
    reference = DDIMScheduler(**SD15)
    reference.set_timesteps(2)
    expected = latents.clone()
    with vidgen.ops.use_backend("torch"):
        for t in reference.timesteps:
            text = torch.cat([uncond, cond]).repeat_interleave(3, dim=0)
            eps_u, eps_c = predict(unet, torch.cat([expected] * 2), t, text).chunk(2)
            expected = reference.step(eps_u + 3.0 * (eps_c - eps_u), t, expected).prev_sample
        got = denoise(unet, latents, cond, uncond, scheduler=reference, num_inference_steps=2, guidance_scale=3.0,
                      progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is only observable on CUDA")
def test_denoising_loop_never_synchronises_with_the_host():
    # Setup (timestep and alpha tables copied to the device) may synchronise once; a step never
    # does: the number of synchronising calls must not grow with the number of steps.
    import warnings

    unet, prior = tiny_video_unet(6).cuda(), tiny_video_unet(7).cuda()
    latents, cond, uncond = (t.cuda() for t in inputs(size=4))
    scheduler = DDIMScheduler(**SD15)

    def synchronisations(loop, steps):
        loop(steps)  # warm-up: first-call allocations and kernel compilation
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loop(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    def sampling(steps):
        denoise(unet, latents, cond, uncond, scheduler=scheduler, num_inference_steps=steps, prior=prior, progress=False)

    def inversion(steps):
        invert(unet, latents, cond, scheduler=scheduler, num_inference_steps=steps, progress=False)

    for loop in (sampling, inversion):
        assert synchronisations(loop, 2) == synchronisations(loop, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_cuda_graph_replay_matches_eager():
    unet, prior = tiny_video_unet(8).cuda(), tiny_video_unet(9).cuda()
    latents, cond, uncond = (t.cuda() for t in inputs(videos=2, size=4))
    kwargs = dict(scheduler=DDIMScheduler(**SD15), num_inference_steps=3, prior=prior, progress=False)
    eager = denoise(unet, latents, cond, uncond, **kwargs)
    graphed = denoise(unet, latents, cond, uncond, cuda_graph=True, **kwargs)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invert(unet, latents, cond, scheduler=kwargs["scheduler"], num_inference_steps=3,
                                      progress=False, cuda_graph=True),
                               invert(unet, latents, cond, scheduler=kwargs["scheduler"], num_inference_steps=3,
                                      progress=False), rtol=1e-5, atol=1e-5)


def test_initial_noise_is_correlated_noise_frame_major():
    x = initial_noise((2, 4, 5, 3, 3), kind="progressive", alpha=2.0, seed=7)
    assert x.shape == (2, 4, 5, 3, 3) and x.transpose(1, 2).is_contiguous()
    expected = vidgen.ops.correlated_noise((2, 5, 4, 3, 3), kind="progressive", alpha=2.0, frame_dim=1, seed=7)
    assert torch.equal(x.transpose(1, 2), expected)


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = default_model.build(str(tmp_path_factory.mktemp("sd") / "model"), "tiny")
    model = VideoModel.from_pretrained(path)
    model.tokenizer.model_max_length = min(model.tokenizer.model_max_length, 77)
    return model


def test_sample_video_end_to_end(tiny_model):
    with vidgen.ops.use_backend("torch"):
        result = sample_video(tiny_model, "a cat", num_frames=3, height=64, width=64, num_inference_steps=2,
                              noise="mixed", seed=1, progress=False)
        expected_start = initial_noise((1, 4, 3, 8, 8), kind="mixed", seed=1)  # same backend: same bits
    assert result.video.shape == (1, 3, 3, 64, 64)
    assert 0 <= result.video.min() and result.video.max() <= 1 and result.video.std() > 0
    assert result.latents.shape == (1, 4, 3, 8, 8)
    assert list(result.times.seconds) == ["text encoding", "denoising", "decoding"]
    assert "ms/step" in result.times.table()
    assert torch.equal(result.initial_latents, expected_start)


def test_sample_video_from_source_video_and_first_frame(tiny_model):
    source = torch.rand(1, 3, 3, 64, 64) * 2 - 1
    with vidgen.ops.use_backend("torch"):
        result = sample_video(tiny_model, ["a dog", "a cat"], num_frames=3, height=64, width=64,
                              num_inference_steps=2, source_video=source, first_frame=source[:, 0], progress=False)
        clean = vidgen.sampling.encode_video(tiny_model, source)
    assert list(result.times.seconds) == ["text encoding", "encoding", "inversion", "denoising", "decoding"]
    assert result.video.shape == (2, 3, 3, 64, 64)
    # LAMP: frame 0 is the condition, never stepped.
    torch.testing.assert_close(result.latents[:, :, 0], clean[:, :, 0].expand(2, -1, -1, -1))
    decoded = decode_latents(tiny_model, result.latents)
    torch.testing.assert_close(decoded, result.video)


def test_bad_arguments_are_refused(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers Stable Diffusion folder"):
        VideoModel.from_pretrained(tmp_path)
    latents, cond, _ = inputs()
    with pytest.raises(ValueError, match="cond: expected \\(1, L, C\\)"):
        denoise(tiny_model.unet, latents, cond[0], scheduler=tiny_model.scheduler, progress=False)
    with pytest.raises(ValueError, match="cuda_graph: CUDA-graph capture needs CUDA tensors"):
        denoise(tiny_model.unet, latents, cond, scheduler=tiny_model.scheduler, cuda_graph=True, progress=False)
    with pytest.raises(ValueError, match="height, width: expected multiples of 8"):
        sample_video(tiny_model, "x", height=60, width=64, progress=False)
