"""Latte (LatteTransformer3DModel, a factorised spatio-temporal DiT) with its temporal blocks on vidgen.

The transformer is diffusers' own LattePipeline test dummy (ada_norm_single blocks, head dim 8),
built in code; the pipeline gets its text embeddings directly (no T5 download). Patched outputs
(the latents handed to the VAE and the decoded frames) equal the unpatched ones in fp32 within
1e-4 of their largest value, vidgen's temporal attention op ran, unpatch restores the model
exactly.
"""
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel
from diffusers.models.attention_processor import AttnProcessor2_0
from test_free_noise import close, op_calls  # noqa: F401  (a fixture)

import vidgen
from vidgen.integration.latte import FusedLatteForward, latte_unsupported_reason


def tiny_latte(frames: int, num_layers: int = 1, heads: int = 3, head_dim: int = 8) -> LatteTransformer3DModel:
    """diffusers' LattePipelineFastTests.get_dummy_components transformer, its table sized for ``frames``."""
    torch.manual_seed(0)
    return LatteTransformer3DModel(
        sample_size=8, num_layers=num_layers, patch_size=2, attention_head_dim=head_dim, num_attention_heads=heads,
        caption_channels=32, in_channels=4, cross_attention_dim=heads * head_dim, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=frames).eval()


def tiny_pipeline(frames: int) -> LattePipeline:
    torch.manual_seed(0)
    pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=AutoencoderKL().eval(),
                         transformer=tiny_latte(frames, num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, frames, *, videos=1, guidance=5.0):
    """(latents handed to the VAE, decoded frames)."""
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(1, 6, 32, generator=gen)
    negative = torch.randn(1, 6, 32, generator=gen)
    handed = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda latents, *a, **k: handed.append(latents.clone()) or decode(latents, *a, **k)
    try:
        out = pipe(prompt_embeds=text, negative_prompt=None, negative_prompt_embeds=negative, num_inference_steps=2, guidance_scale=guidance,
                   num_images_per_prompt=videos, height=8, width=8, video_length=frames, output_type="pt",
                   generator=torch.Generator().manual_seed(0), clean_caption=False, mask_feature=False).frames
    finally:
        del pipe.vae.decode
    return torch.cat(handed), out


def model_inputs(frames, videos=1, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(videos, 4, frames, 8, 8, generator=gen), torch.tensor([500] * videos),
            torch.randn(videos, 6, 32, generator=gen))


class UsersProcessor(AttnProcessor2_0):
    """A processor of the user's: its math is its own, so the fused forward stands aside."""


def run(model, *inputs, **kwargs):
    with torch.no_grad():
        return model(*inputs, **kwargs).sample


def test_latte_pipeline_matches_and_unpatch_restores(op_calls):
    pipe = tiny_pipeline(3)
    model = pipe.transformer
    structure = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    handed, frames = generate(pipe, 3)  # CFG on: 2 videos per call
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        assert isinstance(model.__dict__["forward"], FusedLatteForward)
        replaced = {e.where: e.what for e in vidgen.patch_report(pipe).replaced}
        assert "transformer.temporal_transformer_blocks.1" in replaced and "transformer" in replaced
        patched_handed, patched_frames = generate(pipe, 3)
    close(patched_handed, handed)
    close(patched_frames, frames)
    assert len(op_calls) == 2 * 2 * 1 and op_calls[0][:2] == (2, 3)  # 2 steps x 2 blocks; (videos, frames, ...)
    vidgen.unpatch(pipe)
    assert "forward" not in model.__dict__ and [(n, type(m)) for n, m in model.named_modules()] == structure
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(generate(pipe, 3)[1], frames)


def test_latte_on_the_test_device(op_calls, device):
    # On a CPU the tiny model through the interpreter; with VIDGEN_TEST_DEVICE=cuda a Latte-1-like
    # width (16 heads of 72) in fp16, 16 frames, compiled kernels.
    gpu = device.type == "cuda"
    model = tiny_latte(16, num_layers=2, heads=16, head_dim=72) if gpu else tiny_latte(2)
    dtype = torch.float16 if gpu else torch.float32
    model = model.to(device, dtype)
    inputs = [t.to(device) for t in model_inputs(16 if gpu else 2, videos=2)]
    inputs = [inputs[0].to(dtype), inputs[1], inputs[2].to(dtype)]
    before = run(model, *inputs)
    vidgen.patch(model)
    close(run(model, *inputs).float(), before.float(), tol=1e-2 if gpu else 2e-4)
    assert op_calls
    vidgen.unpatch(model)


def test_latte_calls_the_fused_forward_cannot_serve_run_diffusers(op_calls):
    model = tiny_latte(3)
    inputs = model_inputs(3)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(model)
        # temporal attention switched off: nothing of vidgen's would run
        off = run(model, *inputs, enable_temporal_attentions=False)
        assert not op_calls
        vidgen.unpatch(model)
        assert torch.equal(run(model, *inputs, enable_temporal_attentions=False), off)
        vidgen.patch(model)
        # a frame count the temporal position table does not broadcast to: diffusers' own error
        with pytest.raises(RuntimeError):
            run(model, *model_inputs(2))
        # a processor the fused forward does not reproduce, set after patching: diffusers' forward, said once
        model.temporal_transformer_blocks[0].attn1.set_processor(UsersProcessor())
        with pytest.warns(vidgen.FallbackWarning, match="UsersProcessor"):
            fallback = run(model, *inputs)
        assert not op_calls
    vidgen.unpatch(model)
    torch.testing.assert_close(fallback, run(model, *inputs))


def test_latte_model_vidgen_cannot_serve_is_left_with_a_reason():
    model = tiny_latte(2, heads=1, head_dim=288)  # beyond the temporal kernel's head dims
    assert "head dim 288" in latte_unsupported_reason(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vidgen.patch(model)
    assert "forward" not in model.__dict__
    kept = [e for e in vidgen.patch_report(model).kept if e.what == "Latte temporal blocks"]
    assert kept and "head dim 288" in kept[0].why
    inputs = model_inputs(2)
    run(model, *inputs)  # runs on diffusers' path, no exception
    vidgen.unpatch(model)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("frames", [1, 2, 3])
@pytest.mark.parametrize("videos, guidance", [(1, 1.0), (2, 5.0)])
def test_latte_sweep(op_calls, backend, frames, videos, guidance):
    pipe = tiny_pipeline(frames)
    reference = generate(pipe, frames, videos=videos, guidance=guidance)
    with vidgen.ops.use_backend(backend):
        vidgen.patch(pipe)
        patched = generate(pipe, frames, videos=videos, guidance=guidance)
    for got, want in zip(patched, reference):
        close(got, want, tol=2e-4)
    assert op_calls
    vidgen.unpatch(pipe)
    assert torch.equal(generate(pipe, frames, videos=videos, guidance=guidance)[1], reference[1])


@pytest.mark.parametrize("option", ["compile", "cuda_graph"])
def test_compile_and_cuda_graph_leave_latte_eager_and_say_so(option):
    """Latte's transformer is patched (copy-free temporal blocks) but not compiled or graphed by vidgen.patch:
    the report says so rather than leaving the option silently unused."""
    model = vidgen.patch(tiny_latte(3), **{option: True})
    assert "forward" in model.__dict__  # the fused forward, not a graphed one
    assert not any("_compiled_call_impl" in m.__dict__ for m in model.modules())
    assert isinstance(model.__dict__["forward"], FusedLatteForward)
    kept = [e for e in vidgen.patch_report(model).kept if f"{option} acts on UNet denoisers only" in e.why]
    assert len(kept) == 1
