"""vidgen.patch(..., compile=True): regional torch.compile of every patched denoiser (AnimateDiff's
UNetMotionModel, UNet3DConditionModel, Tune-A-Video's VideoUNet, Stable Video Diffusion's
UNetSpatioTemporalConditionModel), the opt-in fusions (feed_forward,
residual_adds) on. Each repeated block traces as one graph without breaks (dynamo's explain), vidgen's
ops opaque custom ops in it, compiled blocks give eager's values under Inductor, and unpatch restores
the eager blocks. Inductor compiles C++ on a CPU (minutes for a whole tiny UNet on
this CI's cores): the default set compiles one block; whole denoisers are marked slow."""
import pytest
import torch
from diffusers import UNet3DConditionModel, UNetMotionModel

import vidgen
from test_patching import run, tiny_adapter, tiny_unet2d, video_inputs
from vidgen.integration.compile import repeated_blocks
from vidgen.integration.video_unet import VideoResnetBlock


def motion_unet():
    return UNetMotionModel.from_unet2d(tiny_unet2d(), tiny_adapter())


def unet3d():
    torch.manual_seed(6)
    return UNet3DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


def video_unet():
    return vidgen.inflate(tiny_unet2d())


# name -> (builder, text per frame, the repeated-block classes its patched forward calls)
DENOISERS = {
    "animatediff": (motion_unet, True, {"ResnetBlock2D", "BasicTransformerBlock", "AnimateDiffTransformer3D"}),
    "unet3d": (unet3d, False, {"ResnetBlock2D", "BasicTransformerBlock", "TransformerTemporalModel",
                               "TemporalConvLayer"}),
    "tune-a-video": (video_unet, False, {"VideoResnetBlock", "VideoTransformerBlock"}),
}


def patched(name):
    build, text_per_frame, _ = DENOISERS[name]
    model = vidgen.patch(build().eval(), feed_forward=True, residual_adds=True)
    return model, video_inputs(size=4, text_per_frame=text_per_frame)


def first_calls(model, inputs) -> dict:
    """Block class name -> (block, args, kwargs) of its first call in one forward of ``model``."""
    calls, hooks = {}, []
    for _, block in repeated_blocks(model):
        def record(module, args, kwargs):
            calls.setdefault(type(module).__name__, (module, args, kwargs))
        hooks.append(block.register_forward_pre_hook(record, with_kwargs=True))
    try:
        run(model, *inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def traced_as_one_graph(label: str, block, args, kwargs) -> str:
    """Dynamo's explain of one call of ``block``: asserts one graph and no break; returns the graph's code."""
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(block)(*args, **kwargs)
    reasons = [str(r.reason) for r in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), f"{label}: {reasons}"
    return explained.graphs[0].code


# ~15-30 s of tracing each: AnimateDiff (ResNet, transformer and motion-module blocks) by default
@pytest.mark.parametrize("name", ["animatediff", pytest.param("unet3d", marks=pytest.mark.slow),
                                  pytest.param("tune-a-video", marks=pytest.mark.slow)])
def test_every_repeated_block_traces_as_one_graph(name):
    model, inputs = patched(name)
    calls = first_calls(model, inputs)
    assert set(calls) == DENOISERS[name][2]
    for cls, (block, args, kwargs) in calls.items():
        code = traced_as_one_graph(f"{name} {cls}", block, args, kwargs)
        if cls in ("BasicTransformerBlock", "AnimateDiffTransformer3D", "VideoTransformerBlock"):
            # the GEGLU feed-forward (patch(feed_forward=True)): one opaque custom op in the graph
            assert "torch.ops.vidgen.geglu_fwd" in code, f"{name} {cls}"
        if cls in ("BasicTransformerBlock", "VideoTransformerBlock"):
            # patch(residual_adds=True): both attentions' and the feed-forward's output projections,
            # and Tune-A-Video's temporal attention's
            expected = 4 if cls == "VideoTransformerBlock" else 3
            assert code.count("torch.ops.vidgen.linear_residual_fwd") == expected, f"{name} {cls}"
        if cls in ("AnimateDiffTransformer3D", "TransformerTemporalModel"):
            # the motion module's blocks, run by its fused forward: both attentions' and the feed-forward's
            expected = 3 * len(block.transformer_blocks)
            assert code.count("torch.ops.vidgen.linear_residual_fwd") == expected, f"{name} {cls}"
    torch._dynamo.reset()


def svd_blocks_and_calls():
    """A patched tiny Stable Video Diffusion UNet (the opt-in fusions on), its inputs and the first call of
    each of its repeated-block classes."""
    from test_svd import tiny_svd_unet, unet_inputs

    model = vidgen.patch(tiny_svd_unet().eval(), feed_forward=True, residual_adds=True)
    inputs = unet_inputs()
    return model, inputs, first_calls(model, inputs)


def test_stable_video_diffusion_repeated_blocks_trace_as_one_graph():
    """SVD's ResNet pair (spatial, temporal, blender) and its spatio-temporal transformer (vidgen's copy-free
    forward, the temporal blocks' residual adds fused): one graph each, no break (~4 s of tracing)."""
    model, inputs, calls = svd_blocks_and_calls()
    assert set(calls) == {"SpatioTemporalResBlock", "TransformerSpatioTemporalModel"}
    for cls, (block, args, kwargs) in calls.items():
        code = traced_as_one_graph(f"svd {cls}", block, args, kwargs)
        if cls == "TransformerSpatioTemporalModel":
            # spatial block: attn1 and ff (attn2 is the single-token broadcast); temporal: ff_in, attn1 and ff
            assert code.count("torch.ops.vidgen.linear_residual_fwd") == 5
            assert "torch.ops.vidgen.temporal_attention_fwd" in code
    torch._dynamo.reset()


def test_patch_compile_compiles_the_outermost_blocks_and_unpatch_restores():
    model = motion_unet()
    vidgen.patch(model, compile={"dynamic": False})
    blocks = repeated_blocks(model)
    compiled = {path for path, m in model.named_modules() if "_compiled_call_impl" in m.__dict__}
    assert compiled == {path for path, _ in blocks}
    # a motion module is compiled whole: its transformer blocks are not compiled again
    assert not any(p.startswith(q + ".") for p in compiled for q in compiled)
    assert any("motion_modules" in p for p in compiled) and any(".resnets." in p for p in compiled)
    assert f"repeated blocks compiled by torch.compile ({len(blocks)} blocks)" in str(vidgen.patch_report(model))
    vidgen.unpatch(model)
    assert not any("_compiled_call_impl" in m.__dict__ for m in model.modules())


def test_compile_argument_is_checked():
    model = motion_unet()
    with pytest.raises(ValueError, match="compile: modee is not a torch.compile argument"):
        vidgen.patch(model, compile={"modee": "reduce-overhead"})
    with pytest.raises(TypeError, match="compile: expected a bool or a dict"):
        vidgen.patch(model, compile="inductor")
    with pytest.raises(ValueError, match="replays CUDA graphs itself"):
        vidgen.patch(model, cuda_graph=True, compile={"mode": "reduce-overhead"})
    assert not vidgen.is_patched(model)


def test_an_inductor_compiled_video_resnet_block_equals_eager():
    # The block whose GroupNorms pool over frames: under torch.compile they are ATen ops that
    # Inductor fuses (with the SiLU, and the time-embedding add before norm2).
    model, inputs = patched("tune-a-video")
    [(block, args, kwargs)] = [v for k, v in first_calls(model, inputs).items() if k == "VideoResnetBlock"]
    assert isinstance(block, VideoResnetBlock)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = block(*args, **kwargs)
        block.compile(backend="inductor")
        got = block(*args, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow  # Inductor compiles every block shape of the UNet: minutes per model on 2 CPU cores
@pytest.mark.parametrize("name", [*DENOISERS, "svd"])
def test_compiled_denoiser_equals_eager(name):
    model, inputs = patched(name) if name != "svd" else svd_blocks_and_calls()[:2]
    expected = run(model, *inputs)
    torch._dynamo.reset()
    vidgen.patch(model, feed_forward=True, residual_adds=True, compile=True)
    torch.testing.assert_close(run(model, *inputs), expected, rtol=1e-5, atol=1e-5)
    vidgen.unpatch(model)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mode='reduce-overhead' replays CUDA graphs: needs a GPU, "
                                                          "and CPU CI has none")
def test_reduce_overhead_replays_cuda_graphs():
    model, inputs = patched("animatediff")
    model, inputs = model.cuda(), [t.cuda() for t in inputs]
    expected = run(model, *inputs)
    vidgen.patch(model, compile={"mode": "reduce-overhead"})
    for _ in range(3):  # record, then replays
        got = run(model, *inputs)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    vidgen.unpatch(model)
    torch._dynamo.reset()
