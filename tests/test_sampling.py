"""Samplers: DDIM inversion and guided DDIM against loops written from diffusers' schedulers and
the Video Adapter formula (METHODS.md sections 4-6), inversion then reconstruction, and the whole
path on a tiny random-weight SD folder loaded the way the CLI loads a model."""
import os
import traceback

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import vidgen
from vidgen import default_model
from vidgen import VideoUNet
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


# ----------------------------------------------------------------------------------------------
# Host reads: an op that needs a tensor's value on the host (.item(), bool(), nonzero, a boolean
# mask index, a copy between devices) waits for the device on CUDA and cannot be captured in a
# CUDA graph. On CPU tensors the same aten ops still run, so counting them finds a sync
# whatever the device.
# ----------------------------------------------------------------------------------------------
aten = torch.ops.aten
VALUE_READS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero, aten.masked_select,
               aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.bincount}
MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}  # a bool mask: nonzero
SIZED_BY_VALUES = {aten.repeat_interleave}  # a repeats tensor without output_size: its sum is read
COPIES = {aten._to_copy, aten.copy_}
HOST_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}  # no aten op at all on a CPU tensor


def _where() -> str:
    """The innermost caller outside torch and this file: where a host read was asked for."""
    for frame in reversed(traceback.extract_stack()):
        if f"{os.sep}torch{os.sep}" not in frame.filename and frame.filename != __file__:
            return f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.line}"
    return "?"


def _reads_host(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in VALUE_READS:
        return True
    named = {**dict(zip((a.name for a in func._schema.arguments), args)), **kwargs}
    if packet in MASK_INDEXING:
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in named["indices"])
    if packet in SIZED_BY_VALUES:
        return isinstance(named["repeats"], torch.Tensor) and named.get("output_size") is None
    if packet in COPIES:  # a blocking copy between devices waits for the device (pageable host memory)
        if packet is aten._to_copy:
            source, target = named["self"], named.get("device") or named["self"].device
        else:
            source, target = named["src"], named["self"].device
        return torch.device(target).type != source.device.type and not named.get("non_blocking", False)
    return False


class HostReads(TorchDispatchMode):
    """Records every host read made inside the block, with where it was asked for.

    A custom op (vidgen's) hides its body from a dispatch mode, which is off while the op runs:
    the body runs under the mode again, from the op's CPU or CUDA kernel, so an aten-level read
    in a launcher or a reference implementation counts too (HOST_METHODS are seen outside
    custom ops only: the function mode stays off inside them)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self._methods = _HostMethods(self.seen)

    def __enter__(self):
        self._methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._methods.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_host(func, args, kwargs):
            self.seen.append(f"{func} at {_where()}")
        device = next((a if isinstance(a, torch.device) else a.device for a in args
                       if isinstance(a, (torch.Tensor, torch.device))), None)
        if func.namespace != "aten" and device is not None:
            kernel = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, device.type.upper()))
            with self:
                return func.redispatch(kernel, *args, **kwargs)
        return func(*args, **kwargs)


class _HostMethods(TorchFunctionMode):
    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_METHODS:
            self.seen.append(f"Tensor.{func.__name__} at {_where()}")
        return func(*args, **(kwargs or {}))


@torch.library.custom_op("vidgen_tests::scaled_by_first", mutates_args=())
def _scaled_by_first(x: torch.Tensor) -> torch.Tensor:
    return x * float(x[0])  # a host read inside a custom op's body


def host_reads_per_step(loop) -> list[list[str]]:
    """Run ``loop()`` (a denoise/invert call); the host reads of each of its steps (setup excluded)."""
    per_step = []
    run_steps = vidgen.sampling._run_steps

    def watched_run_steps(step, *args, **kwargs):
        def watched_step(x, i, t):
            assert isinstance(t, torch.Tensor)  # the loops hand each step a tensor timestep
            with HostReads() as reads:
                out = step(x, i, t)
            per_step.append(reads.seen)
            return out
        return run_steps(watched_step, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vidgen.sampling, "_run_steps", watched_run_steps)
        loop()
    return per_step


def test_host_read_detector_sees_on_this_device_what_syncs_on_cuda(device):
    table, t = torch.arange(10.0, device=device), torch.tensor(3, device=device)
    syncs_on_cuda = {
        "0-d index": lambda: table[t], "bool()": lambda: bool(t > 1), "boolean mask": lambda: table[table > 2],
        "tolist": lambda: t.tolist(), "repeats tensor": lambda: torch.repeat_interleave(t.reshape(1)),
        "read in a custom op": lambda: _scaled_by_first(table),
    }
    for name, read in syncs_on_cuda.items():
        with HostReads() as reads:
            read()
        assert reads.seen, name
    with HostReads() as reads:  # their device-side equivalents
        table.index_select(0, t.reshape(1))
        torch.where(t > 1, table, 0.0)
        table.repeat_interleave(2)
    assert reads.seen == []


def test_sampling_and_inversion_steps_never_read_the_host(device):
    # Each step gets a tensor timestep on the test device, as on CUDA. On a GPU the first call
    # compiles, autotunes and copies per-device tables (host reads by design), so there each
    # loop runs once unwatched first; every step of the watched run must read nothing.
    unet, prior = tiny_video_unet(6).to(device), tiny_video_unet(7).to(device)
    latents, cond, uncond = (t.to(device) for t in inputs(videos=1, frames=2, size=4))
    scheduler = DDIMScheduler(**SD15)

    def sampling(steps):  # CFG, the Video Adapter prior, rescale, eta > 0 noise, LAMP's first frame
        denoise(unet, latents, cond, uncond, scheduler=scheduler, num_inference_steps=steps, prior=prior,
                guidance_rescale=0.5, eta=0.5, noise="progressive", first_frame=latents[:, :, 0], progress=False)

    def inversion(steps):
        invert(unet, latents, cond, scheduler=scheduler, num_inference_steps=steps, progress=False)

    for name, loop in (("sampling", sampling), ("inversion", inversion)):
        if device.type != "cpu":
            loop(1)
        per_step = host_reads_per_step(lambda: loop(2))
        assert len(per_step) == 2, name
        for i, reads in enumerate(per_step):
            assert not reads, f"{name} step {i} read the host {len(reads)} times:\n" + "\n".join(reads)
