"""vidgen.patch / vidgen.unpatch: same outputs as diffusers, undone exactly, for every supported kind.

Tiny models are built in code, saved to a temporary folder and loaded back the way a user
loads them. Equivalence is fp32 (patched vs unpatched on the same inputs); unpatch must give
bit-identical outputs to the never-patched model.
"""
import pytest
import torch
from diffusers import (AnimateDiffPipeline, DDIMScheduler, MotionAdapter, SparseControlNetModel,
                       UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel)
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
    CrossFrameAttnProcessor, CrossFrameAttnProcessor2_0, TextToVideoZeroPipeline)

import vidgen
from vidgen import VideoUNet, default_model, is_patched
from vidgen.integration.processors import FirstFrameAttnProcessor
from vidgen.integration.schedulers import FusedDDIMScheduler

FRAMES = 3


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)


def tiny_adapter(seed: int = 1) -> MotionAdapter:
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=8, motion_max_seq_length=8)
    with torch.no_grad():  # real (non-zero) output projections, so the motion modules matter
        for name, param in adapter.named_parameters():
            if "proj_out" in name:
                param.normal_(0, 0.2)
    return adapter


@pytest.fixture(scope="module")
def motion_unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("motion") / "unet"
    UNetMotionModel.from_unet2d(tiny_unet2d(), tiny_adapter()).save_pretrained(path)
    return path


def video_inputs(videos=1, frames=FRAMES, size=8, seed=3, text_per_frame=False):
    """(sample (B, C, F, h, w), timestep, text): UNetMotionModel takes text per frame (B*F, L, C)."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(videos, 5, 32, generator=gen)
    return (torch.randn(videos, 4, frames, size, size, generator=gen), torch.tensor(411),
            text.repeat_interleave(frames, dim=0) if text_per_frame else text)


def run(model, *inputs):
    with torch.no_grad():
        return model(*inputs).sample


# ----------------------------------------------------------------------------------------------
# AnimateDiff
# ----------------------------------------------------------------------------------------------
def test_motion_unet_patch_is_equivalent_and_unpatch_restores_bits(motion_unet_dir):
    unet = UNetMotionModel.from_pretrained(motion_unet_dir)
    inputs = video_inputs(text_per_frame=True)
    before = run(unet, *inputs)
    with vidgen.ops.use_backend("torch"):
        assert vidgen.patch(unet) is unet and is_patched(unet)
        record = unet._vidgen_patch
        assert vidgen.patch(unet) is unet and unet._vidgen_patch is record  # idempotent
        patched = run(unet, *inputs)
    torch.testing.assert_close(patched, before, rtol=1e-4, atol=1e-4)
    motion_modules = sum(isinstance(m, AnimateDiffTransformer3D) for m in unet.modules())
    assert f"vidgen: temporal_attention ({motion_modules} motion modules)" in str(unet)
    vidgen.unpatch(unet)
    assert not is_patched(unet) and "vidgen" not in str(unet)
    assert torch.equal(run(unet, *inputs), before)


def test_motion_unet_triton_path(motion_unet_dir):
    # vidgen's Triton temporal kernel through the interpreter on the tiniest shapes.
    unet = UNetMotionModel.from_pretrained(motion_unet_dir)
    inputs = video_inputs(size=4, text_per_frame=True)
    before = run(unet, *inputs)
    vidgen.patch(unet)
    torch.testing.assert_close(run(unet, *inputs), before, rtol=2e-4, atol=2e-4)


def test_patch_options_select_roles(motion_unet_dir):
    unet = UNetMotionModel.from_pretrained(motion_unet_dir)
    processors = unet.attn_processors
    with pytest.warns(UserWarning, match="nothing was patched"):
        vidgen.patch(unet, temporal_attention=False)
    assert "vidgen" not in str(unet)  # nothing else in a motion UNet is vidgen's to patch
    vidgen.patch(unet)  # other options: re-patched
    assert unet._vidgen_patch.options["temporal_attention"]
    assert all(type(p) is type(processors[k]) for k, p in unet.attn_processors.items())  # spatial/text untouched
    vidgen.unpatch(unet)


def test_lora_loaded_after_patch_is_honoured(motion_unet_dir):
    # diffusers loads LoRA by wrapping layers in PEFT modules; the patched forward must run the
    # wrappers (proj_in/proj_out included, which its plain-Linear path reads as raw weights).
    from peft import LoraConfig

    unet = UNetMotionModel.from_pretrained(motion_unet_dir)
    inputs = video_inputs(text_per_frame=True)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        without_lora = run(unet, *inputs)
        torch.manual_seed(5)  # init_lora_weights=False: random, non-zero up-projections
        unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                    target_modules=["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0"]))
        motion_module = next(m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D))
        assert type(motion_module.proj_in) is not torch.nn.Linear  # the wrapper path is what runs
        patched = run(unet, *inputs)
        vidgen.unpatch(unet)
        # diffusers' own motion module calls ``proj_in(input=...)``, which a PEFT wrapper does not
        # accept: the reference bakes the LoRA into plain Linear weights first.
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
        assert type(motion_module.proj_in) is torch.nn.Linear
        reference = run(unet, *inputs)
    assert (reference - without_lora).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(patched, reference, rtol=1e-4, atol=1e-4)


def test_forward_chunking_with_patch(motion_unet_dir):
    unet = UNetMotionModel.from_pretrained(motion_unet_dir)
    inputs = video_inputs(text_per_frame=True)
    unet.enable_forward_chunking(chunk_size=1, dim=1)
    before = run(unet, *inputs)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)
        unet.disable_forward_chunking()
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)  # same function unchunked
    vidgen.unpatch(unet)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return default_model.build(str(tmp_path_factory.mktemp("sd") / "model"), "tiny")


def _animatediff_pipeline(sd_dir):
    pipe = AnimateDiffPipeline.from_pretrained(sd_dir, motion_adapter=tiny_adapter_for(sd_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.tokenizer.model_max_length = min(pipe.tokenizer.model_max_length, 77)  # older default_model folders lack it
    return pipe


def tiny_adapter_for(sd_dir):
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    torch.manual_seed(2)
    adapter = MotionAdapter(block_out_channels=unet.config.block_out_channels, motion_layers_per_block=1,
                            motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=8)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "proj_out" in name:
                param.normal_(0, 0.2)
    return adapter


def sample_latents(pipe) -> torch.Tensor:
    return pipe("a cat", num_frames=FRAMES, height=64, width=64, num_inference_steps=2, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), output_type="latent").frames


def test_animatediff_pipeline_patch_swaps_scheduler_and_matches(sd_dir):
    pipe = _animatediff_pipeline(sd_dir)
    original_scheduler = pipe.scheduler
    assert type(original_scheduler) is DDIMScheduler

    before = sample_latents(pipe)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        assert isinstance(pipe.scheduler, FusedDDIMScheduler)
        assert is_patched(pipe.unet) and "temporal_attention" in str(pipe.unet)
        patched = sample_latents(pipe)
    torch.testing.assert_close(patched, before, rtol=1e-4, atol=1e-4)
    vidgen.unpatch(pipe)
    assert pipe.scheduler is original_scheduler and not is_patched(pipe.unet)
    assert torch.equal(sample_latents(pipe), before)


def test_free_init_with_patch_matches(sd_dir):
    # FreeInit re-runs the denoising loop on frequency-filtered latents: a pipeline-level feature
    # that must see the same UNet and scheduler results when patched.
    pipe = _animatediff_pipeline(sd_dir)
    pipe.enable_free_init(num_iters=2, use_fast_sampling=False)

    before = sample_latents(pipe)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        torch.testing.assert_close(sample_latents(pipe), before, rtol=1e-4, atol=1e-4)
    vidgen.unpatch(pipe)
    pipe.disable_free_init()
    assert not torch.allclose(sample_latents(pipe), before)  # FreeInit did change the result


def test_sparsectrl_controlnet_motion_modules(tmp_path):
    torch.manual_seed(7)
    SparseControlNetModel(
        in_channels=4, conditioning_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), cross_attention_dim=32, attention_head_dim=2,
        motion_num_attention_heads=2, motion_max_seq_length=8).save_pretrained(tmp_path / "controlnet")
    controlnet = SparseControlNetModel.from_pretrained(tmp_path / "controlnet")
    with torch.no_grad():  # its output convolutions are zero-initialised: make every path count
        for param in controlnet.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    sample, timestep, text = video_inputs(size=4, text_per_frame=True)
    gen = torch.Generator().manual_seed(8)
    cond, mask = torch.randn(1, 4, FRAMES, 4, 4, generator=gen), (torch.rand(1, 1, FRAMES, 4, 4, generator=gen) > 0.5).float()

    def outputs():
        with torch.no_grad():
            result = controlnet(sample, timestep, text, cond, conditioning_mask=mask, return_dict=False)
        return [*result[0], result[1]]

    before = outputs()
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(controlnet)
        assert "motion modules" in str(controlnet).splitlines()[1]
        for got, expected in zip(outputs(), before):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    vidgen.unpatch(controlnet)
    assert all(torch.equal(got, expected) for got, expected in zip(outputs(), before))


def test_unet3d_temporal_transformers(tmp_path):
    torch.manual_seed(6)
    UNet3DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")).save_pretrained(tmp_path / "unet3d")
    unet = UNet3DConditionModel.from_pretrained(tmp_path / "unet3d")
    inputs = video_inputs(size=4)
    before = run(unet, *inputs)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)
    assert "motion modules" in str(unet).splitlines()[1]
    vidgen.unpatch(unet)
    assert torch.equal(run(unet, *inputs), before)


# ----------------------------------------------------------------------------------------------
# Text2Video-Zero
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("processor_class", [CrossFrameAttnProcessor2_0, CrossFrameAttnProcessor])
def test_text2video_zero_processors(tmp_path, processor_class):
    tiny_unet2d().save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    unet.set_attn_processor(processor_class(batch_size=2))
    originals = unet.attn_processors
    gen = torch.Generator().manual_seed(4)
    inputs = (torch.randn(2 * FRAMES, 4, 8, 8, generator=gen), torch.tensor(300), torch.randn(2 * FRAMES, 5, 32, generator=gen))
    before = run(unet, *inputs)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        after = unet.attn_processors
        for name, processor in after.items():
            if ".attn1." in name:
                assert isinstance(processor, FirstFrameAttnProcessor) and processor.original is originals[name]
            else:
                assert processor is originals[name]  # text cross-attention untouched
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)
        assert "vidgen: first-frame attention" in str(unet)

        # The pipeline installs its processors inside __call__: they are translated on arrival.
        unet.set_attn_processor(AttnProcessor2_0())
        assert "vidgen: first-frame" not in str(unet.down_blocks[0])
        unet.set_attn_processor(processor_class(batch_size=2))
        assert isinstance(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor, FirstFrameAttnProcessor)
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)

    vidgen.unpatch(unet)
    assert "set_attn_processor" not in unet.__dict__ and "vidgen" not in str(unet)
    assert not any(isinstance(p, FirstFrameAttnProcessor) for p in unet.attn_processors.values())
    assert torch.equal(run(unet, *inputs), before)


def test_text2video_zero_pipeline(sd_dir, monkeypatch):
    # The pipeline installs cross-frame processors inside __call__ and restores the old ones after.
    pipe = TextToVideoZeroPipeline.from_pretrained(sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.tokenizer.model_max_length = min(pipe.tokenizer.model_max_length, 77)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe("a cat", video_length=FRAMES, height=64, width=64, num_inference_steps=3, t0=0, t1=1,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images

    calls = []
    original_call = FirstFrameAttnProcessor.__call__
    monkeypatch.setattr(FirstFrameAttnProcessor, "__call__", lambda self, *a, **k: calls.append(1) or original_call(self, *a, **k))
    before = sample()
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        assert isinstance(pipe.scheduler, FusedDDIMScheduler)
        torch.testing.assert_close(sample(), before, rtol=1e-4, atol=1e-4)
    assert calls  # the processors installed inside __call__ ran on vidgen's kernel
    vidgen.unpatch(pipe)
    calls.clear()
    assert torch.equal(sample(), before) and not calls


def test_text2video_zero_triton_path(tmp_path):
    unet = tiny_unet2d()
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    gen = torch.Generator().manual_seed(4)
    inputs = (torch.randn(2 * FRAMES, 4, 4, 4, generator=gen), torch.tensor(300), torch.randn(2 * FRAMES, 5, 32, generator=gen))
    before = run(unet, *inputs)
    vidgen.patch(unet)
    torch.testing.assert_close(run(unet, *inputs), before, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------------------------
# vidgen's VideoUNet
# ----------------------------------------------------------------------------------------------
def test_video_unet_patch_switches_implementation(tmp_path):
    tiny_unet2d().save_pretrained(tmp_path / "unet")
    unet = VideoUNet.from_pretrained_2d(tmp_path)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "attn_temp.to_out" in name:
                param.normal_(0, 0.3)
    inputs = video_inputs(videos=2)
    with vidgen.ops.use_backend("torch"):
        born_patched = run(unet, *inputs)
        assert unet.vidgen_ops == {"frame_attention": True, "temporal_attention": True, "group_norm": True}
        vidgen.unpatch(unet)
        assert unet.vidgen_ops == {"frame_attention": False, "temporal_attention": False, "group_norm": False}
        assert "unpatched" in str(unet).splitlines()[1]
        reference = run(unet, *inputs)
        vidgen.patch(unet, frame_attention=False)
        assert unet.vidgen_ops == {"frame_attention": False, "temporal_attention": True, "group_norm": True}
        half = run(unet, *inputs)
        vidgen.unpatch(unet)
        assert torch.equal(run(unet, *inputs), reference)
    torch.testing.assert_close(born_patched, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(half, reference, rtol=1e-4, atol=1e-4)


def test_bad_objects_are_refused():
    with pytest.raises(TypeError, match="obj: expected a diffusers pipeline or model"):
        vidgen.patch("unet")


@pytest.mark.slow  # torch.compile tracing: ~15 s on one CPU core
def test_patched_models_work_under_torch_compile(motion_unet_dir, tmp_path):
    motion = UNetMotionModel.from_pretrained(motion_unet_dir)
    tiny_unet2d().save_pretrained(tmp_path / "unet")
    video = VideoUNet.from_pretrained_2d(tmp_path)
    with vidgen.ops.use_backend("torch"):
        for unet, text_per_frame, fullgraph in ((motion, True, False), (video, False, True)):
            inputs = video_inputs(size=4, text_per_frame=text_per_frame)
            expected = run(vidgen.patch(unet), *inputs)
            compiled = torch.compile(unet, backend="aot_eager", fullgraph=fullgraph)
            torch.testing.assert_close(run(compiled, *inputs), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Every pipeline accelerated or left working: fallbacks and the patch report
# ----------------------------------------------------------------------------------------------
def unet2d_with_heads(heads_per_block, seed: int = 0) -> UNet2DConditionModel:
    """A tiny UNet whose self-attention head dim is channels / heads per block (diffusers names the
    head count ``attention_head_dim``)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=heads_per_block, norm_num_groups=8)


def t2v_zero_inputs(size=8):
    gen = torch.Generator().manual_seed(4)
    return (torch.randn(2 * FRAMES, 4, size, size, generator=gen), torch.tensor(300),
            torch.randn(2 * FRAMES, 5, 32, generator=gen))


@pytest.mark.parametrize("head_dim", [1, 4])
def test_text2video_zero_head_dims_the_kernel_does_not_serve_stay_diffusers(head_dim):
    # Text2Video-Zero pipelines set cross-frame processors on every self-attention, whatever its
    # head dim; D < 8 is outside the frame-attention kernels' range.
    unet = unet2d_with_heads((32 // head_dim, 64 // head_dim))
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    inputs = t2v_zero_inputs()
    before = run(unet, *inputs)
    with pytest.warns(UserWarning, match="nothing was patched"):
        assert vidgen.patch(unet) is unet
    assert not is_patched(unet)
    report = vidgen.patch_report(unet)
    assert not report.patched
    kept = [e for e in report.kept if e.what == "Text2Video-Zero cross-frame attention"]
    self_attention = [p for p, m in unet.named_modules() if p.endswith(".attn1")]
    assert sorted(e.where for e in kept) == sorted(self_attention) and len(kept) == 7
    assert all(f"head dim {head_dim} is outside" in e.why for e in kept)
    assert torch.equal(run(unet, *inputs), before)  # diffusers' own processors ran


def test_text2video_zero_mixed_head_dims_patch_what_the_kernel_serves():
    unet = unet2d_with_heads((2, 16))  # D = 16 in the outer blocks, D = 4 in the inner ones
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    inputs = t2v_zero_inputs()
    before = run(unet, *inputs)
    with vidgen.ops.use_backend("torch"):
        vidgen.patch(unet)
        assert is_patched(unet)
        torch.testing.assert_close(run(unet, *inputs), before, rtol=1e-4, atol=1e-4)
    report = vidgen.patch_report(unet)
    swapped = {e.where for e in report.replaced if e.what.startswith("first-frame attention kernel")}
    left = {e.where for e in report.kept if e.what == "Text2Video-Zero cross-frame attention"}
    assert swapped == {"down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                       "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                       "up_blocks.1.attentions.1.transformer_blocks.0.attn1"}
    assert left == {"down_blocks.1.attentions.0.transformer_blocks.0.attn1",
                    "mid_block.attentions.0.transformer_blocks.0.attn1",
                    "up_blocks.0.attentions.0.transformer_blocks.0.attn1",
                    "up_blocks.0.attentions.1.transformer_blocks.0.attn1"}
    processors = unet.attn_processors
    assert all(isinstance(processors[f"{p}.processor"], FirstFrameAttnProcessor) for p in swapped)
    assert all(type(processors[f"{p}.processor"]) is CrossFrameAttnProcessor2_0 for p in left)
    text = str(report)
    assert "replaced:" in text and "head dim 4 is outside" in text and "text cross-attention" in text
    vidgen.unpatch(unet)
    assert not vidgen.patch_report(unet).options and "not patched" in str(vidgen.patch_report(unet))


def test_first_frame_processor_hands_unserved_calls_to_diffusers_and_says_so_once():
    from diffusers.models.attention_processor import Attention

    from vidgen.ops._fallback import forget_warnings

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()  # D = 4: no kernel
    hidden = torch.randn(2 * FRAMES, 5, 8, generator=torch.Generator().manual_seed(1))
    attn.set_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    with torch.no_grad():
        expected = attn(hidden)
    attn.set_processor(FirstFrameAttnProcessor(CrossFrameAttnProcessor2_0(batch_size=2)))
    forget_warnings()
    with pytest.warns(vidgen.FallbackWarning, match="head dim 4") as caught, torch.no_grad():
        first, second = attn(hidden), attn(hidden)
    assert len([w for w in caught if issubclass(w.category, vidgen.FallbackWarning)]) == 1
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_motion_module_with_head_dim_beyond_the_kernel_is_left_and_reported():
    torch.manual_seed(0)
    module = AnimateDiffTransformer3D(num_attention_heads=1, attention_head_dim=264, in_channels=264,
                                      norm_num_groups=8).eval()
    hidden = torch.randn(FRAMES, 264, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = module(hidden, num_frames=FRAMES)
    with pytest.warns(UserWarning, match="nothing was patched"):
        vidgen.patch(module)
    (entry,) = [e for e in vidgen.patch_report(module).kept if e.what == "motion module"]
    assert entry.where == "" and "head dim 264 is outside the temporal-attention kernels' range [1, 256]" in entry.why
    assert "forward" not in module.__dict__
    with torch.no_grad():
        assert torch.equal(module(hidden, num_frames=FRAMES), before)


def test_patched_motion_module_runs_diffusers_forward_for_an_unserved_dtype(motion_unet_dir):
    from vidgen.ops._fallback import forget_warnings

    unet = UNetMotionModel.from_pretrained(motion_unet_dir).double()
    inputs = [x.double() if x.is_floating_point() else x for x in video_inputs(size=4, text_per_frame=True)]
    before = run(unet, *inputs)
    vidgen.patch(unet)
    forget_warnings()
    with pytest.warns(vidgen.FallbackWarning, match="float64"):
        patched = run(unet, *inputs)
    assert torch.equal(patched, before)  # every motion module ran its own forward


def test_patch_report_of_a_pipeline(sd_dir):
    pipe = _animatediff_pipeline(sd_dir)
    assert not vidgen.patch_report(pipe).options  # never patched
    vidgen.patch(pipe)
    report = vidgen.patch_report(pipe)
    assert isinstance(report, vidgen.PatchReport) and report.patched and vidgen.is_patched(pipe)
    replaced = {e.where: e.what for e in report.replaced}
    motion_modules = [path for path, m in pipe.unet.named_modules() if isinstance(m, AnimateDiffTransformer3D)]
    assert {f"unet.{p}" for p in motion_modules} <= set(replaced)
    assert replaced["scheduler"].startswith("FusedDDIMScheduler")
    kept = {e.where: e for e in report.kept}
    assert kept["motion_adapter"].what == "MotionAdapter"
    assert any(w.startswith("unet.") and e.what == "image self-attention" for w, e in kept.items())
    assert any(w.startswith("vae.") for w in kept)  # the VAE's attention is listed, not silently skipped
    vidgen.unpatch(pipe)
    assert not vidgen.is_patched(pipe) and not vidgen.patch_report(pipe).options


def test_pag_pipeline_runs_its_motion_modules_fused_and_matches(sd_dir, monkeypatch):
    # AnimateDiffPAGPipeline puts PAG's identity processor on the mid block's motion-module attn1
    # inside each call: the fused forward computes its perturbed branch instead of falling back.
    import warnings

    from diffusers import AnimateDiffPAGPipeline

    from vidgen.integration import blocks as modules  # where the motion blocks call the attention

    pipe = AnimateDiffPAGPipeline.from_pretrained(sd_dir, motion_adapter=tiny_adapter_for(sd_dir),
                                                  pag_applied_layers=["mid_block.*attn1"])
    pipe.set_progress_bar_config(disable=True)
    pipe.tokenizer.model_max_length = min(pipe.tokenizer.model_max_length, 77)

    def sample():
        return pipe("a cat", num_frames=FRAMES, height=64, width=64, num_inference_steps=2, guidance_scale=3.0,
                    pag_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="latent").frames

    identity_calls = []
    real = modules.attend_over_frames  # (attn, hidden_states, num_frames, positional_embedding, identity_videos)
    monkeypatch.setattr(modules, "attend_over_frames",
                        lambda *a: identity_calls.append(a[4]) or real(*a))
    before = sample()
    with vidgen.ops.use_backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("error", vidgen.FallbackWarning)  # no motion module falls back
        vidgen.patch(pipe)
        assert not [e for e in vidgen.patch_report(pipe).kept if "motion" in e.what]
        patched = sample()
    torch.testing.assert_close(patched, before, rtol=1e-4, atol=1e-4)
    assert 1 in identity_calls  # [uncond, cond, perturbed] videos: the last one's attention is the identity
    vidgen.unpatch(pipe)


def test_patch_of_an_unrelated_module_says_nothing_was_patched():
    layer = torch.nn.Linear(2, 2)
    with pytest.warns(UserWarning, match="nothing was patched in this Linear"):
        assert vidgen.patch(layer) is layer
    assert not vidgen.is_patched(layer)
    report = vidgen.patch_report(layer)
    assert not report.patched and report.kept and "nothing vidgen accelerates" in report.kept[0].why
    assert "nothing patched" in str(report)
    assert "extra_repr" not in layer.__dict__  # untouched


def test_public_api_is_listed():
    names = dir(vidgen)
    for name in ("patch", "unpatch", "is_patched", "patch_report", "PatchReport", "inflate", "sample_video",
                 "VideoModel", "invert", "ops", "FallbackWarning"):
        assert name in names and name in vidgen.__all__
        assert getattr(vidgen, name) is not None
    assert vidgen.is_patched is is_patched


def test_video_unet_with_fp8_frame_attention(tmp_path):
    tiny_unet2d().save_pretrained(tmp_path / "unet")
    unet = VideoUNet.from_pretrained_2d(tmp_path, torch_dtype=torch.bfloat16)
    inputs = [x.bfloat16() if x.is_floating_point() else x for x in video_inputs(videos=1)]
    with vidgen.ops.use_backend("torch"):
        auto = run(unet, *inputs)
        vidgen.patch(unet, attention_precision="fp8")
        assert {block.attn1.processor.precision for block in unet.video_blocks()} == {"fp8"}
        assert "attention_precision=fp8" in str(vidgen.patch_report(unet))
        fp8 = run(unet, *inputs)
        vidgen.unpatch(unet)
        assert torch.equal(run(unet, *inputs), run(unet, *inputs))
    error = float((fp8.double() - auto.double()).norm() / auto.double().norm())
    assert 0 < error < 0.1
    with pytest.raises(ValueError, match="attention_precision: expected one of 'auto', 'fp8', got 'fp4'"):
        vidgen.patch(unet, attention_precision="fp4")
