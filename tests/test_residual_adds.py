"""vidgen.patch(..., residual_adds=True): the denoiser's SD-style diffusers transformer blocks add their
residuals in the output projections' epilogues (vidgen.ops.linear_residual). Equal to diffusers' blocks
in value and gradient, reported, restored by unpatch; blocks and calls it cannot reproduce stay on
diffusers' forward and say why."""
import contextlib
import warnings

import pytest
import torch
from diffusers import UNetMotionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor
from torch import nn

import vidgen
from test_patching import _animatediff_pipeline, run, sd_dir, tiny_adapter, tiny_unet2d, video_inputs  # noqa: F401
from vidgen.integration import residual_adds
from vidgen.integration.residual_adds import (ResidualBlockForward, VideoResidualBlockForward, patch_residual_adds,
                                              unpatch_residual_adds)
from vidgen.ops._fallback import forget_warnings


def motion_unet():
    return UNetMotionModel.from_unet2d(tiny_unet2d(), tiny_adapter()).eval()


@contextlib.contextmanager
def no_fallback():
    """Fail on any fallback to diffusers' forward: an equality that fell back would prove nothing."""
    forget_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error", vidgen.FallbackWarning)
        yield


def fused_blocks(model):
    return [m for m in model.modules() if isinstance(m.__dict__.get("forward"), ResidualBlockForward)]


@pytest.fixture
def fused_adds(monkeypatch):
    """The residual adds that ran in a projection's epilogue (calls of vidgen.ops.linear_residual from the
    fused forwards): a fused forward that silently took its unfused path would leave this empty."""
    calls, real = [], residual_adds.linear_residual
    monkeypatch.setattr(residual_adds, "linear_residual", lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    return calls


def test_tiny_animatediff_unet_with_fused_residual_adds_equals_diffusers_and_unpatch_restores(fused_adds):
    """The spatial blocks get the fused block forward; the motion modules' blocks, which vidgen's motion-module
    forward runs itself (with their positional embeddings), fuse their adds there."""
    unet = motion_unet()
    inputs = video_inputs(size=4, text_per_frame=True)
    expected = run(unet, *inputs)
    spatial = [m for name, m in unet.named_modules()
               if isinstance(m, BasicTransformerBlock) and "motion_modules" not in name]
    motion_blocks = [m for name, m in unet.named_modules()
                     if isinstance(m, BasicTransformerBlock) and "motion_modules" in name]
    assert spatial and motion_blocks and all(b.pos_embed is not None for b in motion_blocks)
    with vidgen.ops.use_backend("triton"):  # the kernel (the interpreter here)
        vidgen.patch(unet, residual_adds=True)
        assert fused_blocks(unet) == spatial
        with no_fallback():
            torch.testing.assert_close(run(unet, *inputs), expected, rtol=2e-4, atol=2e-4)
    assert len(fused_adds) == 3 * (len(spatial) + len(motion_blocks))  # attn1, attn2 and ff of each block
    report = vidgen.patch_report(unet)
    assert len([e for e in report.replaced if e.what.startswith("transformer block residual adds: in the output")]) == len(spatial)
    motion_modules = [name for name, m in unet.named_modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    assert sorted(e.where for e in report.replaced if e.what.startswith("motion module residual adds")) == sorted(motion_modules)
    assert report.options["residual_adds"] is True
    assert not [e for e in report.kept if "residual adds" in e.what]
    vidgen.unpatch(unet)
    assert not fused_blocks(unet)
    fused_adds.clear()
    torch.testing.assert_close(run(unet, *inputs), expected, rtol=0, atol=0)
    assert not fused_adds


def test_tiny_tune_a_video_unet_with_fused_residual_adds_equals_its_patched_forward(fused_adds):
    """Frame attention, text attention, feed-forward and temporal attention adds fused. The PyTorch
    backend: the kernel is the AnimateDiff test's; the interpreter would run the frame and temporal
    attention kernels too (16 s)."""
    unet = vidgen.inflate(tiny_unet2d()).eval()
    inputs = video_inputs(size=4)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        expected = run(unet, *inputs)
        vidgen.patch(unet, residual_adds=True)
        blocks = fused_blocks(unet)
        assert blocks and all(isinstance(b.__dict__["forward"], VideoResidualBlockForward) for b in blocks)
        with no_fallback():  # attn1, attn2, the feed-forward and attn_temp fused
            torch.testing.assert_close(run(unet, *inputs), expected, rtol=2e-4, atol=2e-4)
        assert len(fused_adds) == 4 * len(blocks)
        vidgen.patch(unet, temporal_attention=False, residual_adds=True)  # the reference attn_temp: its add stays
        forget_warnings()
        with pytest.warns(vidgen.FallbackWarning, match="after attn_temp runs as a separate add: attn_temp's "
                                                        "processor is ReferenceTemporalAttnProcessor"):
            torch.testing.assert_close(run(unet, *inputs), expected, rtol=2e-4, atol=2e-4)
    vidgen.unpatch(unet)
    assert not fused_blocks(unet)


def test_tiny_stable_video_diffusion_unet_with_fused_residual_adds_equals_its_patched_forward(fused_adds):
    """The spatial blocks' self-attention and feed-forward adds fused, and the temporal blocks' ff_in,
    attention over frames and feed-forward adds; the single-token cross-attentions (vidgen's processor,
    a broadcast value projection) keep their adds, which are one pass, and the spatial block's says so."""
    from test_svd import assert_close, spatio_temporal_models, tiny_svd_unet, unet_inputs

    unet = tiny_svd_unet().eval()
    inputs = unet_inputs()
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        expected = run(unet, *inputs)
        vidgen.patch(unet, residual_adds=True)
        spatial = fused_blocks(unet)
        temporal = [b for m in spatio_temporal_models(unet) for b in m.temporal_transformer_blocks]
        assert spatial and len(temporal) == len(spatial)
        forget_warnings()
        with pytest.warns(vidgen.FallbackWarning, match="attn2's processor is SingleTokenCrossAttnProcessor") as caught:
            assert_close(run(unet, *inputs), expected)
        assert len([w for w in caught if issubclass(w.category, vidgen.FallbackWarning)]) == 1
        assert len(fused_adds) == 2 * len(spatial) + 3 * len(temporal)
    report = vidgen.patch_report(unet)
    assert len([e for e in report.replaced if e.what.startswith("SVD temporal block residual adds")]) == len(temporal)
    vidgen.unpatch(unet)
    fused_adds.clear()
    vidgen.patch(unet)  # without residual_adds: no temporal block fuses its adds
    with vidgen.ops.use_backend("torch"):
        assert_close(run(unet, *inputs), expected)
    assert not fused_adds


def test_tiny_text2video_zero_unet_with_fused_residual_adds_equals_diffusers(fused_adds):
    """Text2Video-Zero's first-frame self-attention (vidgen's kernel) and its cross-frame processor's text
    cross-attention add their residuals in the projections' epilogues too: every half of every block fused,
    the kernel itself (the interpreter here)."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0)

    from test_patching import t2v_zero_inputs

    unet = tiny_unet2d()
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    inputs = t2v_zero_inputs(size=4)
    expected = run(unet, *inputs)
    with vidgen.ops.use_backend("triton"):
        vidgen.patch(unet, residual_adds=True)
        blocks = fused_blocks(unet)
        assert blocks
        with no_fallback():
            torch.testing.assert_close(run(unet, *inputs), expected, rtol=2e-4, atol=2e-4)
    assert len(fused_adds) == 3 * len(blocks)
    vidgen.unpatch(unet)
    assert torch.equal(run(unet, *inputs), expected)


def test_gradients_through_the_fused_blocks_equal_diffusers():
    """Gradients (input and every parameter) of a tiny AnimateDiff UNet with the feed-forward fusion as
    well: the op's PyTorch backward against autograd's. The PyTorch backend (the kernel's forward is
    the test above's): the interpreter would take 4x as long."""
    inputs = video_inputs(size=4, text_per_frame=True)
    weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(9))
    results = []
    for fused in (False, True):
        unet = motion_unet()
        if fused:
            vidgen.patch(unet, feed_forward=True, residual_adds=True)
            assert fused_blocks(unet)
        sample = inputs[0].clone().requires_grad_()
        with vidgen.ops.use_backend("torch"), no_fallback():
            (unet(sample, *inputs[1:]).sample * weights).sum().backward()
        results.append((sample.grad, {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}))
    (sample_grad, grads), (fused_sample_grad, fused_grads) = results
    torch.testing.assert_close(fused_sample_grad, sample_grad, rtol=2e-4, atol=2e-4)
    assert set(fused_grads) == set(grads)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=2e-4, atol=2e-4, msg=name)


def tiny_block():
    torch.manual_seed(0)
    return BasicTransformerBlock(16, 2, 8, cross_attention_dim=12, activation_fn="geglu").eval()


def test_adds_it_cannot_fuse_stay_separate_adds_and_say_why():
    """Each half whose projection cannot take the residual runs as diffusers' forward runs it (the
    module, then the add), the others stay fused; a call it cannot serve at all runs diffusers' forward."""
    class LoraLinear(nn.Linear):  # stands in for peft's wrapped layer: not a plain nn.Linear
        pass

    block = tiny_block()
    x, text = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    expected = block(x, encoder_hidden_states=text)
    patch_residual_adds(block)
    forget_warnings()
    with vidgen.ops.use_backend("torch"):
        with no_fallback():
            torch.testing.assert_close(block(x, encoder_hidden_states=text), expected, rtol=1e-5, atol=1e-5)
        block.attn2.set_processor(AttnProcessor())  # any processor but AttnProcessor2_0 keeps its own math
        with pytest.warns(vidgen.FallbackWarning, match="residual add after attn2 runs as a separate add: attn2's "
                                                        "processor is AttnProcessor"):
            torch.testing.assert_close(block(x, encoder_hidden_states=text), expected, rtol=1e-5, atol=1e-5)
        block.attn2.set_processor(block.attn1.processor)
        old = block.attn1.to_out[0]
        block.attn1.to_out[0] = LoraLinear(old.in_features, old.out_features)
        block.attn1.to_out[0].load_state_dict(old.state_dict())
        with pytest.warns(vidgen.FallbackWarning, match="attn1.to_out.0 is a LoraLinear"):
            torch.testing.assert_close(block(x, encoder_hidden_states=text), expected, rtol=1e-5, atol=1e-5)
        block.attn1.to_out[0] = old
        block.attn1.forward = lambda *args, **kwargs: type(block.attn1).forward(block.attn1, *args, **kwargs)
        with pytest.warns(vidgen.FallbackWarning, match="a hook is on attn1"):  # as diffusers' hooks replace it
            torch.testing.assert_close(block(x, encoder_hidden_states=text), expected, rtol=1e-5, atol=1e-5)
        del block.attn1.forward
        with pytest.warns(vidgen.FallbackWarning, match="attn1 is called with a mask or cross_attention_kwargs"):
            block(x, encoder_hidden_states=text, cross_attention_kwargs={"scale": 1.0})
        handle = block.ff.net[2].register_forward_hook(lambda module, args, out: out * 0)
        with pytest.warns(vidgen.FallbackWarning, match="a hook is on ff.net.2"):
            got = block(x, encoder_hidden_states=text)
        handle.remove()
        torch.testing.assert_close(got, type(block).forward(block, x, encoder_hidden_states=text) - block.ff(
            block.norm3(got)), rtol=1e-5, atol=1e-5)  # the hook zeroed the feed-forward's output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.warns(vidgen.FallbackWarning, match="runs diffusers' forward: autocast is on"):
                got = block(x, encoder_hidden_states=text)
            torch.testing.assert_close(got, type(block).forward(block, x, encoder_hidden_states=text), rtol=0, atol=0)
    unpatch_residual_adds(block)
    assert "forward" not in block.__dict__


def test_blocks_it_cannot_reproduce_are_refused_with_the_reason():
    ada = BasicTransformerBlock(16, 2, 8, norm_type="ada_norm", num_embeds_ada_norm=10)
    with pytest.raises(ValueError, match="norm_type 'ada_norm'"):
        patch_residual_adds(ada)
    with pytest.raises(TypeError, match="block: expected diffusers' BasicTransformerBlock or a "
                                        "VideoTransformerBlock, got Linear"):
        patch_residual_adds(nn.Linear(2, 2))
    assert "forward" not in ada.__dict__


def test_residual_adds_is_off_by_default():
    unet = vidgen.patch(motion_unet())
    assert not fused_blocks(unet)
    assert "residual_adds" not in vidgen.patch_report(unet).options


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_stable_video_diffusion_temporal_block_with_fused_adds_equals_its_unfused_forward_in_value_and_gradient(
        backend, fused_adds):
    """One temporal block of a tiny SVD UNet through vidgen's copy-free forward, its ff_in, attn1 and ff adds
    fused or not: the same output, and the same gradients of the input, the context and every parameter
    (the kernel's forward in the interpreter; the op's PyTorch backward)."""
    from test_svd import spatio_temporal_models, tiny_svd_unet

    from vidgen.integration.svd import temporal_block_over_frames

    block = spatio_temporal_models(tiny_svd_unet())[0].temporal_transformer_blocks[0]
    frames, channels = 3, block.norm_in.normalized_shape[0]
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(2 * frames, 5, channels, generator=gen)  # (B*F, N, C), two videos
    context = torch.randn(2, 1, block.attn2.to_k.in_features, generator=gen)
    weights = torch.randn(tokens.shape, generator=gen)
    results = []
    for fused in (False, True):
        block.zero_grad()
        x, ctx = tokens.clone().requires_grad_(), context.clone().requires_grad_()
        with vidgen.ops.use_backend(backend), no_fallback():
            out = temporal_block_over_frames(block, x, frames, ctx, residual_adds=fused)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad, ctx.grad, {n: p.grad.clone() for n, p in block.named_parameters()
                                                        if p.grad is not None}))
    assert len(fused_adds) == 3
    (out, dx, dctx, grads), (fused_out, fused_dx, fused_dctx, fused_grads) = results
    for got, expected in ((fused_out, out), (fused_dx, dx), (fused_dctx, dctx)):
        torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)
    assert set(fused_grads) == set(grads)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=2e-4, atol=2e-4, msg=name)


def test_free_noise_split_inference_with_fused_residual_adds_matches_diffusers(sd_dir, fused_adds):
    """FreeNoise's windows and split inference's bands are views of the video: the motion-module blocks' adds
    fuse on them too (a band's residual is a strided view) and the latents equal diffusers'."""
    from test_free_noise import close, generate

    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=2, context_stride=1, weighting_scheme="delayed_reverse_sawtooth")
    pipe.enable_free_noise_split_inference(spatial_split_size=24, temporal_split_size=2)
    reference = generate(pipe, 3, videos=2)[0]
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe, residual_adds=True)
        assert any(e.what.startswith("motion module residual adds") for e in vidgen.patch_report(pipe).replaced)
        with no_fallback():
            close(generate(pipe, 3, videos=2)[0], reference)
    assert fused_adds
    vidgen.unpatch(pipe)
