"""Stable Video Diffusion on vidgen: the temporal blocks, the fused Euler step, the pipeline.

The models are diffusers' own SVD pipeline test components (tests/pipelines/stable_video_diffusion,
get_dummy_components), built in code, saved to a temporary folder and loaded back the way a user
loads them. Equivalence is fp32 on the CPU, patched vs unpatched on the same inputs, within 1e-4 of
the largest value; unpatch must give bit-identical outputs.
"""
import pytest
import torch
from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                       UNetSpatioTemporalConditionModel)
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from test_sampling import HostReads

import vidgen
from vidgen.integration import temporal
from vidgen.integration.processors import SingleTokenCrossAttnProcessor
from vidgen.integration.schedulers import FusedEulerDiscreteScheduler, euler_unsupported_reason
from vidgen.integration.svd import FusedSpatioTemporalForward


def tiny_svd_unet() -> UNetSpatioTemporalConditionModel:
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)


def svd_scheduler(**overrides) -> EulerDiscreteScheduler:
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                  num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                  steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    return EulerDiscreteScheduler(**{**config, **overrides})


def tiny_svd_pipeline() -> StableVideoDiffusionPipeline:
    """diffusers' test components (its 32-pixel image encoder takes tensors only: the pipeline resizes a
    PIL image to 224 pixels for it; ``vidgen.default_model.svd_pipeline("tiny")`` has one that takes both)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4)
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=1))
    return StableVideoDiffusionPipeline(unet=tiny_svd_unet(), image_encoder=encoder, scheduler=svd_scheduler(), vae=vae,
                                        feature_extractor=CLIPImageProcessor(crop_size=32, size=32))


@pytest.fixture(scope="module")
def svd_unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("svd") / "unet"
    tiny_svd_unet().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("svd") / "pipeline"
    tiny_svd_pipeline().save_pretrained(path)
    return path


def unet_inputs(videos=2, frames=3, size=4, seed=3):
    """(sample (B, F, 8, h, w), timestep, image embedding (B, 1, 32), added time ids (B, 3)). At 2x2 latents
    the model is ill-conditioned in diffusers itself (a 1e-6 relative change of the input moves the output by
    3%): 4x4 is the smallest size that compares."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(videos, frames, 8, size, size, generator=gen), torch.tensor(1.5),
            torch.randn(videos, 1, 32, generator=gen), torch.tensor([[6.0, 127.0, 0.02]]).repeat(videos, 1))


def run(unet, *inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def assert_close(actual, expected):
    """Within 1e-4 of the largest magnitude (the issue's bound for fp32 on the CPU)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4 * scale)


@pytest.fixture
def temporal_calls(monkeypatch):
    """The (B, F, N, H, D) query shapes vidgen's temporal-attention op ran on."""
    calls, real = [], temporal.temporal_attention
    monkeypatch.setattr(temporal, "temporal_attention", lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    return calls


def spatio_temporal_models(unet):
    return [m for m in unet.modules() if isinstance(m, TransformerSpatioTemporalModel)]


# ---- the UNet's temporal blocks -----------------------------------------------------------------
def test_unet_patch_is_equivalent_and_unpatch_restores_structure_state_and_bits(svd_unet_dir, temporal_calls):
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_unet_dir)
    inputs = unet_inputs(videos=2, frames=3)
    before, structure, state = run(unet, *inputs), str(unet), {k: v.clone() for k, v in unet.state_dict().items()}
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        patched = run(unet, *inputs)
    assert_close(patched, before)
    models = spatio_temporal_models(unet)
    blocks = sum(len(m.temporal_transformer_blocks) for m in models)
    assert models and all(isinstance(m.__dict__.get("forward"), FusedSpatioTemporalForward) for m in models)
    assert len(temporal_calls) == blocks and all(shape[:2] == (2, 3) for shape in temporal_calls)
    report = vidgen.patch_report(unet)
    assert sum("SVD temporal block" in e.what for e in report.replaced) == blocks
    assert sum("single-token cross-attention" in e.what for e in report.replaced) == 2 * blocks
    assert not any(e.what == "text cross-attention" for e in report.kept)
    assert any("temporal ResNet block" in e.what for e in report.kept)
    vidgen.unpatch(unet)
    assert str(unet) == structure and not any("forward" in m.__dict__ for m in models)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert torch.equal(run(unet, *inputs), before)


def test_unet_patch_on_the_triton_interpreter(svd_unet_dir, temporal_calls):
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_unet_dir)
    inputs = unet_inputs(videos=1, frames=2)
    before = run(unet, *inputs)
    vidgen.patch(unet)  # the default backend: Triton's interpreter on the CPU
    assert_close(run(unet, *inputs), before)
    assert temporal_calls


@pytest.mark.slow
@pytest.mark.parametrize("frames,videos", [(1, 1), (2, 3), (14, 1), (25, 1)])
def test_unet_patch_over_frame_counts(svd_unet_dir, frames, videos):
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_unet_dir)
    inputs = unet_inputs(videos=videos, frames=frames)
    before = run(unet, *inputs)
    for backend in ("torch", "triton"):
        with vidgen.ops.use_backend(backend):
            vidgen.patch(unet)
            assert_close(run(unet, *inputs), before)
            vidgen.unpatch(unet)


def test_unsupported_structure_and_calls_stay_on_diffusers_path_and_say_why(svd_unet_dir):
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_unet_dir)
    inputs = unet_inputs(videos=1, frames=2)
    before = run(unet, *inputs)
    first, second = spatio_temporal_models(unet)[:2]

    class OtherBlock(type(first.temporal_transformer_blocks[0])):
        pass

    first.temporal_transformer_blocks[0].__class__ = OtherBlock
    vidgen.patch(unet)
    kept = [e for e in vidgen.patch_report(unet).kept if e.what == "SVD temporal blocks"]
    assert len(kept) == 1 and "expected a TemporalBasicTransformerBlock, got OtherBlock" in kept[0].why
    assert "forward" not in first.__dict__ and "forward" in second.__dict__
    # a processor the fused forward does not reproduce, set after patching: diffusers' forward, said once
    second.temporal_transformer_blocks[0].attn1.set_processor(AttnProcessor())
    second.temporal_transformer_blocks[0].attn1.processor.__class__ = type("MyProcessor", (AttnProcessor,), {})
    with pytest.warns(vidgen.FallbackWarning, match="MyProcessor"):
        assert_close(run(unet, *inputs), before)
    vidgen.unpatch(unet)
    first.temporal_transformer_blocks[0].__class__ = OtherBlock.__mro__[1]


# ---- cross-attention against one token -----------------------------------------------------------
def test_cross_attention_false_keeps_diffusers_processors(svd_unet_dir):
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_unet_dir)
    vidgen.patch(unet, cross_attention=False)
    report = vidgen.patch_report(unet)
    assert report.options["cross_attention"] is False and "cross_attention=False" in str(report)
    assert not any("single-token" in e.what for e in report.replaced)
    assert any("SVD temporal block" in e.what for e in report.replaced)
    assert not any(isinstance(m.processor, SingleTokenCrossAttnProcessor) for m in unet.modules()
                   if isinstance(m, Attention))
    vidgen.patch(unet)  # other options: re-patched
    assert any(isinstance(m.processor, SingleTokenCrossAttnProcessor) for m in unet.modules()
               if isinstance(m, Attention))
    vidgen.unpatch(unet)
    assert all(type(m.processor) is AttnProcessor2_0 for m in unet.modules() if isinstance(m, Attention))


def test_single_token_cross_attention_is_the_value_projection_and_defers_otherwise():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, residual_connection=True,
                     rescale_output_factor=2.0).eval()
    default, fused = AttnProcessor2_0(), SingleTokenCrossAttnProcessor(AttnProcessor2_0())
    tokens, maps = torch.randn(3, 5, 16), torch.randn(3, 16, 2, 3)
    one, several = torch.randn(3, 1, 12), torch.randn(3, 4, 12)
    with torch.no_grad():
        for hidden in (tokens, maps):
            torch.testing.assert_close(fused(attn, hidden, one), default(attn, hidden, one), rtol=1e-5, atol=1e-6)
            assert torch.equal(fused(attn, hidden, several), default(attn, hidden, several))  # diffusers' own
        mask = torch.zeros(3, 1, 1)
        assert torch.equal(fused(attn, tokens, one, mask), default(attn, tokens, one, mask))
    calls = []
    attn.to_q.register_forward_hook(lambda *a: calls.append("to_q"))
    with torch.no_grad():
        fused(attn, tokens, one)
    assert calls == []  # no query projection, no scores


# ---- the fused Euler step ------------------------------------------------------------------------
def diffusers_loop(scheduler, outputs, x):
    """diffusers' scale_model_input + step bookkeeping for len(outputs) steps; (x per step, x0 per step)."""
    samples, originals = [], []
    for t, model_output in zip(scheduler.timesteps, outputs):
        scheduler.scale_model_input(x, t)
        result = scheduler.step(model_output, t, x)
        x = result.prev_sample
        samples.append(x)
        originals.append(result.pred_original_sample)
    return samples, originals


@pytest.mark.parametrize("config", [{}, dict(prediction_type="epsilon", use_karras_sigmas=False)])
def test_fused_euler_scheduler_matches_diffusers_over_a_schedule(config):
    steps, shape = 4, (2, 3, 4, 5, 3)
    reference = svd_scheduler(**config)
    fused = FusedEulerDiscreteScheduler.from_config(reference.config)
    assert euler_unsupported_reason(reference) is None
    for s in (reference, fused):
        s.set_timesteps(steps)
    torch.testing.assert_close(fused.timesteps, reference.timesteps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * reference.init_noise_sigma
    outputs = [torch.randn(shape, generator=gen) for _ in range(steps)]
    expected, expected_x0 = diffusers_loop(reference, outputs, x)
    with vidgen.ops.use_backend("torch"):
        got, got_x0 = diffusers_loop(fused, outputs, x)
    for a, b in zip(got + got_x0, expected + expected_x0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert fused.step_index == reference.step_index == steps


def test_fused_euler_guided_step_with_per_frame_scale_never_reads_the_host():
    scheduler = FusedEulerDiscreteScheduler.from_config(svd_scheduler().config)
    scheduler.set_timesteps(3, device="cpu")
    x, cond, uncond = (torch.randn(1, 5, 4, 3, 3, generator=torch.Generator().manual_seed(s)) for s in range(3))
    scale = torch.linspace(1.0, 2.5, 5)
    reference = svd_scheduler()
    reference.set_timesteps(3)
    for t in scheduler.timesteps[:2]:
        scheduler.scale_model_input(x, t)
        with HostReads() as reads, vidgen.ops.use_backend("torch"):
            out = scheduler.guided_step(cond, t, x, uncond, guidance_scale=scale).prev_sample
        assert not reads.seen, "\n".join(reads.seen)
        reference.scale_model_input(x, t)
        guided = uncond + scale[None, :, None, None, None] * (cond - uncond)  # the SVD pipeline's CFG
        expected = reference.step(guided, t, x).prev_sample
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        x = out


def test_fused_euler_scheduler_keeps_diffusers_step_for_churn_and_is_refused_for_other_schedulers():
    fused = FusedEulerDiscreteScheduler.from_config(svd_scheduler().config)
    fused.set_timesteps(2)
    x = torch.randn(1, 2, 4, 2, 2)
    with pytest.warns(vidgen.FallbackWarning, match="s_churn"):
        fused.step(x, fused.timesteps[0], x, s_churn=0.5, generator=torch.Generator().manual_seed(0))
    assert "not" in euler_unsupported_reason(type("MyEuler", (EulerDiscreteScheduler,), {})())
    assert "prediction_type" in euler_unsupported_reason(svd_scheduler(prediction_type="flow_prediction"))


# ---- the pipeline --------------------------------------------------------------------------------
def run_pipeline(pipe, frames, image, **kwargs):
    """(frames, the latents handed to the VAE) of one call."""
    handed = []
    decode = pipe.decode_latents
    pipe.decode_latents = lambda latents, *a, **k: handed.append(latents.clone()) or decode(latents, *a, **k)
    try:
        out = pipe(image=image, num_frames=frames, height=32, width=32, num_inference_steps=2, output_type="pt",
                   generator=torch.Generator().manual_seed(0), **kwargs).frames
    finally:
        del pipe.decode_latents
    return out, handed[0]


@pytest.mark.parametrize("frames,cfg", [(3, True), pytest.param(2, False, marks=pytest.mark.slow)])
def test_pipeline_patch_matches_on_frames_and_latents(svd_dir, temporal_calls, frames, cfg):
    pipe = StableVideoDiffusionPipeline.from_pretrained(svd_dir)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    guidance = dict(min_guidance_scale=1.0, max_guidance_scale=2.5 if cfg else 1.0)
    expected, expected_latents = run_pipeline(pipe, frames, image, **guidance)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        assert type(pipe.scheduler) is FusedEulerDiscreteScheduler
        got, latents = run_pipeline(pipe, frames, image, **guidance)
    # diffusers' first Euler step forms x + d with x ~ sigma_max * noise (700 * 4) and x + d ~ 1: one ulp of
    # d (2.4e-4) is its own rounding floor, which a 1e-7 change of the UNet output can move; on top of
    # 1e-4 of the largest latent, the latents get that floor, the frames none
    floor = torch.finfo(torch.float32).eps * pipe.scheduler.config.sigma_max * 4
    torch.testing.assert_close(latents, expected_latents, rtol=0,
                               atol=1e-4 * expected_latents.abs().max().item() + floor)
    assert_close(got, expected)
    assert temporal_calls and all(shape[1] == frames for shape in temporal_calls)
    assert {shape[0] for shape in temporal_calls} == {2 if cfg else 1}  # CFG doubles the batch
    report = str(vidgen.patch_report(pipe))
    assert "FusedEulerDiscreteScheduler" in report and "temporal ResNet block" in report
    vidgen.unpatch(pipe)
    assert type(pipe.scheduler) is EulerDiscreteScheduler
    assert torch.equal(run_pipeline(pipe, frames, image, **guidance)[0], expected)


# ---- the command line ----------------------------------------------------------------------------
def test_sample_animates_an_image_with_a_stable_video_diffusion_folder(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    from vidgen import cli
    from vidgen.default_model import svd_pipeline

    monkeypatch.setenv("VIDGEN_BACKEND", "torch")  # the plumbing; the kernels are tested above
    svd_dir = tmp_path / "svd"
    svd_pipeline("tiny").save_pretrained(svd_dir)  # the built-in random model's tiny SVD

    image = tmp_path / "frame.png"
    iio.imwrite(image, (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    out = tmp_path / "video.gif"
    status = cli.main(["sample", "--model", str(svd_dir), "--image", str(image), "--frames", "2", "--steps", "1",
                       "--height", "32", "--width", "32", "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    assert iio.imread(out).shape[:3] == (2, 32, 32)
