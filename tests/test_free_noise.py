"""FreeNoise (AnimateDiff's windowed temporal attention) and its split inference on the fused motion module.

The pipeline is diffusers' AnimateDiff with the tiny components of test_patching (built in code);
FreeNoise is enabled through the pipeline's own ``enable_free_noise`` before or after patching.
Patched outputs (the latents handed to the VAE, and decoded frames) equal the unpatched ones in
fp32 within 1e-4 of their largest value; vidgen's temporal attention op ran; unpatch restores the
structure, the state dict and bit-identical outputs.
"""
import pytest
import torch
from diffusers.models.attention import FreeNoiseTransformerBlock
from diffusers.pipelines.free_noise_utils import SplitInferenceModule
from test_patching import _animatediff_pipeline, sd_dir  # noqa: F401

import vidgen
from vidgen.integration import temporal


def close(actual, expected, tol=1e-4):
    """Within ``tol`` of the reference's largest value (the issue's measure)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * expected.abs().max().item())


@pytest.fixture
def op_calls(monkeypatch):
    """How many times vidgen's temporal attention op ran."""
    calls = []
    real = temporal.temporal_attention
    monkeypatch.setattr(temporal, "temporal_attention", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def generate(pipe, frames, *, videos=1, guidance=3.0, output_type="latent", steps=2):
    """(latents handed to the VAE, pipeline output): the VAE's input is recorded on its way in."""
    handed = []
    decode = pipe.vae.decode

    def recording(latents, *args, **kwargs):
        handed.append(latents.clone())
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = recording
    try:
        out = pipe("a cat", num_frames=frames, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
                   num_videos_per_prompt=videos, generator=torch.Generator().manual_seed(0),
                   output_type=output_type).frames
    finally:
        del pipe.vae.decode
    return (torch.cat(handed) if handed else out), out


def structure(module):
    return [(name, type(m)) for name, m in module.named_modules()]


def free_noise_blocks(pipe):
    return [m for m in pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock)]


def test_free_noise_before_patching_matches_and_unpatch_restores(sd_dir, op_calls):
    # 6 frames in windows of 4, stride 3: (0, 4) and the partial last window (2, 6) counting for 2 frames.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=4, context_stride=3, weighting_scheme="pyramid")
    shape, state = structure(pipe.unet), {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    handed, frames = generate(pipe, 6, output_type="pt")
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        report = vidgen.patch_report(pipe)
        assert not [e for e in report.kept if "motion" in e.what], report
        assert any("FreeNoise windows of 4 frames, stride 3" in e.what for e in report.replaced)
        patched_handed, patched_frames = generate(pipe, 6, output_type="pt")
    close(patched_handed, handed)
    close(patched_frames, frames)
    assert {s[1] for s in op_calls} == {4}  # every window of 4 frames ran on vidgen's op
    vidgen.unpatch(pipe)
    assert structure(pipe.unet) == shape and free_noise_blocks(pipe)
    assert all(torch.equal(v, state[k]) for k, v in pipe.unet.state_dict().items())
    assert torch.equal(generate(pipe, 6, output_type="pt")[1], frames)


def test_free_noise_enabled_after_patching_runs_fused(sd_dir, op_calls):
    # the pipeline swaps the blocks under the patched forward: it notices at call time, and the
    # report (re-patched by the wrapped method) says so; disabling restores the plain blocks.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=3, context_stride=2, weighting_scheme="flat")
    reference = generate(pipe, 5, guidance=1.0)[0]  # CFG off; windows (0, 3), (2, 5)
    pipe.disable_free_noise()
    plain = generate(pipe, 5, guidance=1.0)[0]
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        pipe.enable_free_noise(context_length=3, context_stride=2, weighting_scheme="flat")
        assert free_noise_blocks(pipe) and vidgen.is_patched(pipe)
        assert any("FreeNoise" in e.what for e in vidgen.patch_report(pipe).replaced)
        op_calls.clear()
        close(generate(pipe, 5, guidance=1.0)[0], reference)
        assert op_calls and {s[1] for s in op_calls} == {3}
        pipe.disable_free_noise()
        assert not free_noise_blocks(pipe) and vidgen.is_patched(pipe)
        close(generate(pipe, 5, guidance=1.0)[0], plain)
    vidgen.unpatch(pipe)
    assert "enable_free_noise" not in pipe.__dict__ and torch.equal(generate(pipe, 5, guidance=1.0)[0], plain)


def test_blocks_swapped_under_a_patched_unet_are_noticed_at_call_time(sd_dir, op_calls):
    # only the UNet is patched (no pipeline method re-patches): the fused forward sees the new
    # FreeNoise blocks and split wrappers when it is called.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=2, context_stride=1, weighting_scheme="pyramid")
    pipe.enable_free_noise_split_inference(spatial_split_size=16, temporal_split_size=2)
    reference = generate(pipe, 3, steps=1)[0]
    pipe = _animatediff_pipeline(sd_dir)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe.unet)
        pipe.enable_free_noise(context_length=2, context_stride=1, weighting_scheme="pyramid")
        pipe.enable_free_noise_split_inference(spatial_split_size=16, temporal_split_size=2)
        close(generate(pipe, 3, steps=1)[0], reference)
    assert op_calls and {s[1] for s in op_calls} == {2}
    vidgen.unpatch(pipe.unet)


def test_free_noise_split_inference_matches(sd_dir, op_calls):
    # SplitInferenceModule wraps the motion modules' blocks and projections (and the spatial
    # parts): the fused forward runs each wrapped block on bands of spatial positions.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=2, context_stride=1, weighting_scheme="delayed_reverse_sawtooth")
    pipe.enable_free_noise_split_inference(spatial_split_size=24, temporal_split_size=2)
    reference = generate(pipe, 3, videos=2)[0]  # batch of 2 videos, CFG on
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        assert any("split inference over 24 positions" in e.what for e in vidgen.patch_report(pipe).replaced)
        close(generate(pipe, 3, videos=2)[0], reference)
    assert op_calls
    shape = structure(pipe.unet)
    vidgen.unpatch(pipe)
    assert structure(pipe.unet) == shape
    assert any(isinstance(m, SplitInferenceModule) for m in pipe.unet.modules())
    assert torch.equal(generate(pipe, 3, videos=2)[0], reference)


def test_free_noise_triton_path(sd_dir, op_calls):
    # vidgen's Triton temporal kernel through the interpreter, windows of 2 over 3 frames.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=2, context_stride=1)
    reference = generate(pipe, 3, guidance=1.0, steps=1)[0]
    vidgen.patch(pipe)
    close(generate(pipe, 3, guidance=1.0, steps=1)[0], reference, tol=2e-4)
    assert op_calls
    vidgen.unpatch(pipe)


def test_free_noise_calls_diffusers_fails_on_stay_diffusers(sd_dir):
    # fewer frames than the window: the patched call fails exactly as diffusers' own does.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=4, context_stride=2)
    with pytest.raises(Exception) as unpatched:
        generate(pipe, 3, guidance=1.0, steps=1)
    vidgen.patch(pipe)
    with pytest.raises(type(unpatched.value)) as patched:
        generate(pipe, 3, guidance=1.0, steps=1)
    assert str(patched.value) == str(unpatched.value)
    vidgen.unpatch(pipe)


def test_a_split_vidgen_does_not_serve_stays_diffusers_with_a_reason(sd_dir):
    # a SplitInferenceModule splitting frames (not positions) changes what the block computes: that
    # motion module stays on diffusers' path, the report says why, and the call runs.
    pipe = _animatediff_pipeline(sd_dir)
    module = pipe.unet.down_blocks[0].motion_modules[0]
    module.transformer_blocks[0] = SplitInferenceModule(module.transformer_blocks[0], 2, 1, ["hidden_states"])
    reference = generate(pipe, 3, guidance=1.0, steps=1)[0]
    vidgen.patch(pipe)
    kept = [e for e in vidgen.patch_report(pipe).kept if e.where == "unet.down_blocks.0.motion_modules.0"]
    assert kept and "splitting dim 1" in kept[0].why
    close(generate(pipe, 3, guidance=1.0, steps=1)[0], reference, tol=2e-4)
    vidgen.unpatch(pipe)


def test_free_noise_motion_module_on_the_test_device(device):
    # One motion module made FreeNoise by diffusers' own helper: on a CPU a tiny one through the
    # interpreter; with VIDGEN_TEST_DEVICE=cuda an SD1.5-size one (C = 320, 8 heads of 40) in fp16,
    # 26 frames in windows of 16, stride 4 (the partial last window included), compiled kernels.
    from types import SimpleNamespace

    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
    from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin

    from vidgen.integration.motion import patch_motion_module, unpatch_motion_module

    gpu = device.type == "cuda"
    channels, heads, frames, size, length, stride = (320, 8, 26, 16, 16, 4) if gpu else (32, 2, 7, 3, 4, 2)
    dtype = torch.float16 if gpu else torch.float32
    torch.manual_seed(0)
    module = AnimateDiffTransformer3D(num_attention_heads=heads, attention_head_dim=channels // heads,
                                      in_channels=channels, norm_num_groups=8, double_self_attention=True,
                                      positional_embeddings="sinusoidal", num_positional_embeddings=32,
                                      activation_fn="geglu")
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn_like(param))
    pipeline_state = SimpleNamespace(_free_noise_context_length=length, _free_noise_context_stride=stride,
                                     _free_noise_weighting_scheme="pyramid", device=device, dtype=dtype)
    AnimateDiffFreeNoiseMixin._enable_free_noise_in_block(pipeline_state, SimpleNamespace(motion_modules=[module]))
    module = module.to(device, dtype)
    assert isinstance(module.transformer_blocks[0], FreeNoiseTransformerBlock)
    x = torch.randn(2 * frames, channels, size, size, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with torch.no_grad():
        want = module(x, num_frames=frames)
        patch_motion_module(module)
        got = module(x, num_frames=frames)
        unpatch_motion_module(module)
        assert torch.equal(module(x, num_frames=frames), want)
    close(got.float(), want.float(), tol=1e-2 if gpu else 2e-4)  # fp16 on the GPU: rounding differs


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("frames, length, stride, scheme, videos, guidance", [
    (1, 1, 1, "flat", 1, 3.0),
    (2, 2, 1, "pyramid", 2, 1.0),
    (3, 2, 2, "pyramid", 1, 3.0),  # (0, 2) and the partial last window (1, 3)
    (7, 4, 2, "delayed_reverse_sawtooth", 1, 3.0),  # (0, 4), (2, 6) and (3, 7) for the last frame
    (9, 4, 2, "pyramid", 2, 3.0),
    (8, 5, 3, "flat", 1, 1.0),
])
def test_free_noise_sweep(sd_dir, op_calls, backend, frames, length, stride, scheme, videos, guidance):
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=scheme)
    reference = generate(pipe, frames, videos=videos, guidance=guidance, steps=1)[0]
    with vidgen.ops.use_backend(backend):
        vidgen.patch(pipe)
        close(generate(pipe, frames, videos=videos, guidance=guidance, steps=1)[0], reference, tol=2e-4)
    assert op_calls
    vidgen.unpatch(pipe)
