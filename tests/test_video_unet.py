"""Tune-A-Video inflation: VideoUNet vs a reference written from the Tune-A-Video formulation.

The reference below walks the same parameters but computes the way the reference code does
(METHODS.md sections 1, 2, 6): 5-D tensors, convs per frame via rearrange, ``nn.GroupNorm`` on
5-D tensors (statistics over frames), K/V of frames 0 and f-1 gathered by ``cat`` then attention,
``rearrange("(b f) d c -> (b d) f c")`` around ``attn_temp``, upsampling by ``[1, 2, 2]``.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from safetensors.torch import load_file

import vidgen
from vidgen import VideoUNet


def tiny_unet2d(seed: int = 0, linear_projection: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, use_linear_projection=linear_projection)


def randomise_temporal(model: torch.nn.Module, seed: int = 1) -> None:
    """Fresh temporal layers are almost the identity (zero output weight): give them real weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "_temp." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + (1.0 if name.endswith("norm_temp.weight") else 0.0))


def save_2d(tmp_path, unet2d) -> str:
    unet2d.save_pretrained(tmp_path / "unet")
    return str(tmp_path)


# ----------------------------------------------------------------------------------------------
# The reference forward (Tune-A-Video's formulation, float64)
# ----------------------------------------------------------------------------------------------
def _attention(attn, x, context):
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return attn.to_out[0](rearrange(weights @ v, "b h n d -> b n (h d)"))


def _frame_attention(attn, x, frames, mode):
    k, v = attn.to_k(x), attn.to_v(x)
    prev = [max(f - 1, 0) for f in range(frames)]

    def keyed(t):
        t = rearrange(t, "(b f) d c -> b f d c", f=frames)
        parts = [t[:, [0] * frames]] + ([t[:, prev]] if mode == "sparse_causal" else [])
        return rearrange(torch.cat(parts, dim=2), "b f d c -> (b f) d c")

    q = attn.to_q(x)
    k, v = keyed(k), keyed(v)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return attn.to_out[0](rearrange(weights @ v, "b h n d -> b n (h d)"))


def _block(blk, x, text, frames, mode):
    x = _frame_attention(blk.attn1, blk.norm1(x), frames, mode) + x
    x = _attention(blk.attn2, blk.norm2(x), text) + x
    x = blk.ff(blk.norm3(x)) + x
    d = x.shape[1]
    x = rearrange(x, "(b f) d c -> (b d) f c", f=frames)
    normed = blk.norm_temp(x)
    x = _attention(blk.attn_temp, normed, normed) + x
    return rearrange(x, "(b d) f c -> (b f) d c", d=d)


def _conv(conv, x):
    frames = x.shape[2]
    return rearrange(conv(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=frames)


def _group_norm_5d(norm, x):
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)  # pools over (F, h, w)


def _resnet(r, x, temb):
    h = _conv(r.conv1, F.silu(_group_norm_5d(r.norm1, x)))
    h = h + r.time_emb_proj(F.silu(temb))[:, :, None, None, None]
    h = _conv(r.conv2, F.silu(_group_norm_5d(r.norm2, h)))
    shortcut = _conv(r.conv_shortcut, x) if r.conv_shortcut is not None else x
    return (shortcut + h) / r.output_scale_factor


def _transformer(tm, x, text, mode):
    b, c, frames, height, width = x.shape
    x = rearrange(x, "b c f h w -> (b f) c h w")
    residual = x
    x = tm.norm(x)  # per frame, as the reference Transformer3DModel
    if tm.use_linear_projection:
        x = tm.proj_in(rearrange(x, "n c h w -> n (h w) c"))
    else:
        x = rearrange(tm.proj_in(x), "n c h w -> n (h w) c")
    text = repeat(text, "b n c -> (b f) n c", f=frames)
    for blk in tm.transformer_blocks:
        x = _block(blk, x, text, frames, mode)
    if tm.use_linear_projection:
        x = rearrange(tm.proj_out(x), "n (h w) c -> n c h w", h=height)
    else:
        x = tm.proj_out(rearrange(x, "n (h w) c -> n c h w", h=height))
    return rearrange(x + residual, "(b f) c h w -> b c f h w", f=frames)


def tuneavideo_reference(unet, sample, timestep, text):
    mode = unet.config.frame_mode
    temb = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
    x = _conv(unet.conv_in, sample)
    skips = [x]
    for block in unet.down_blocks:
        for i, resnet in enumerate(block.resnets):
            x = _resnet(resnet, x, temb)
            if getattr(block, "attentions", None):
                x = _transformer(block.attentions[i], x, text, mode)
            skips.append(x)
        for down in block.downsamplers or []:
            x = _conv(down.conv, x)
            skips.append(x)
    x = _resnet(unet.mid_block.resnets[0], x, temb)
    for attn, resnet in zip(unet.mid_block.attentions, unet.mid_block.resnets[1:]):
        x = _resnet(resnet, _transformer(attn, x, text, mode), temb)
    for block in unet.up_blocks:
        for i, resnet in enumerate(block.resnets):
            x = _resnet(resnet, torch.cat([x, skips.pop()], dim=1), temb)
            if getattr(block, "attentions", None):
                x = _transformer(block.attentions[i], x, text, mode)
        for up in block.upsamplers or []:
            x = _conv(up.conv, F.interpolate(x, scale_factor=[1.0, 2.0, 2.0], mode="nearest"))
    x = F.silu(_group_norm_5d(unet.conv_norm_out, x))
    return _conv(unet.conv_out, x)


def _inputs(videos=2, frames=3, size=8, dtype=torch.float32, seed=5):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(videos, 4, frames, size, size, generator=gen, dtype=dtype)
    text = torch.randn(videos, 7, 32, generator=gen, dtype=dtype)
    timestep = torch.tensor([17, 503][:videos])
    return sample, timestep, text


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sparse_causal", "first_frame"])
def test_inflated_unet_matches_tuneavideo_formulation(tmp_path, mode):
    # Loaded through the user path (a diffusers folder on disk). The reference PyTorch processors
    # (unpatched state) in float64 match to rounding; vidgen's ops (torch backend) in fp32.
    unet = VideoUNet.from_pretrained_2d(save_2d(tmp_path, tiny_unet2d()), frame_mode=mode)
    randomise_temporal(unet)
    sample, timestep, text = _inputs()
    with torch.no_grad():
        with vidgen.ops.use_backend("torch"):
            vidgen_out = unet(sample, timestep, text).sample
        unet.double()
        expected = tuneavideo_reference(unet, sample.double(), timestep, text.double())
        unet.use_vidgen_ops(False, False)
        reference_out = unet(sample.double(), timestep, text.double()).sample
    assert vidgen_out.shape == (2, 4, 3, 8, 8)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(reference_out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(vidgen_out.double(), expected, rtol=1e-4, atol=1e-4)


def test_inflated_unet_triton_path_fp32(tmp_path):
    # vidgen's Triton kernels through the interpreter (auto backend on CPU in tests), fp32 vs fp64 reference.
    unet = VideoUNet.from_pretrained_2d(save_2d(tmp_path, tiny_unet2d(linear_projection=True)))
    randomise_temporal(unet)
    sample, timestep, text = _inputs(videos=1, frames=3)
    with torch.no_grad():
        out = unet(sample, timestep[:1], text).sample
        expected = tuneavideo_reference(unet.double(), sample.double(), timestep[:1], text.double())
    torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frame_pooled_group_norm_is_5d_group_norm(dtype):
    from vidgen.integration.video_unet import FrameCount, FramePooledGroupNorm

    gen = torch.Generator().manual_seed(9)
    norm = torch.nn.GroupNorm(4, 24, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24, generator=gen))
        norm.bias.copy_(torch.randn(24, generator=gen))
    frames = FrameCount()
    frames.value = 5
    pooled = FramePooledGroupNorm(norm, frames)
    pooled.load_state_dict(norm.state_dict())
    x = (torch.randn(2 * 5, 24, 3, 7, generator=gen) * 3 + 2).to(dtype)  # (b f) c h w, offset mean
    video = rearrange(x, "(b f) c h w -> b c f h w", f=5)
    expected = rearrange(F.group_norm(video.double(), 4, norm.weight.double(), norm.bias.double(), 1e-6),
                         "b c f h w -> (b f) c h w")
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -6 * expected.abs().max().item()
    torch.testing.assert_close(pooled(x).double(), expected, rtol=0, atol=tolerance)


def test_one_frame_without_temporal_layers_is_the_image_unet():
    unet2d = tiny_unet2d()
    unet = vidgen.inflate(tiny_unet2d())
    with torch.no_grad():
        for block in unet.video_blocks():
            block.attn_temp.to_out[0].bias.zero_()  # weight is already zero: the temporal block is the identity
    sample, timestep, text = _inputs(videos=2, frames=1)
    with torch.no_grad(), vidgen.ops.use_backend("torch"):
        out = unet(sample, timestep, text).sample
        image = unet2d(sample[:, :, 0], timestep, text).sample
    torch.testing.assert_close(out[:, :, 0], image, rtol=1e-5, atol=1e-5)


def test_inflate_shares_2d_weights_and_initialises_temporal_layers():
    unet2d = tiny_unet2d()
    unet = vidgen.inflate(unet2d, frame_mode="first_frame")
    assert unet.config.frame_mode == "first_frame"
    own, image = unet.state_dict(), unet2d.state_dict()
    assert set(own) - set(image) == {k for k in own if "_temp." in k}
    assert set(image) <= set(own)
    for key, tensor in image.items():
        assert own[key].data_ptr() == tensor.data_ptr(), key
    names = [k for k in own if "_temp." in k]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight" in names
    assert "up_blocks.1.attentions.0.transformer_blocks.0.norm_temp.weight" in names
    for block in unet.video_blocks():
        assert torch.count_nonzero(block.attn_temp.to_out[0].weight) == 0
        assert torch.count_nonzero(block.attn_temp.to_out[0].bias) > 0
        assert torch.count_nonzero(block.attn_temp.to_q.weight) > 0
        assert not block.attn_temp.to_q.weight.is_meta


def test_save_and_load_roundtrip_safetensors(tmp_path):
    unet = vidgen.inflate(tiny_unet2d(), frame_mode="first_frame")
    randomise_temporal(unet)
    unet.save_pretrained(tmp_path / "video")
    assert (tmp_path / "video" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "video" / "config.json").read_text())
    assert config["_class_name"] == "VideoUNet" and config["frame_mode"] == "first_frame"
    loaded = VideoUNet.from_pretrained(tmp_path / "video")
    assert loaded.config.frame_mode == "first_frame"
    saved = load_file(tmp_path / "video" / "diffusion_pytorch_model.safetensors")
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(saved[key], tensor), key
    sample, timestep, text = _inputs(videos=1, frames=2)
    with torch.no_grad(), vidgen.ops.use_backend("torch"):
        torch.testing.assert_close(loaded(sample, 3, text).sample, unet(sample, 3, text).sample, rtol=0, atol=0)


def test_reference_state_dict_loads_and_misfits_are_explained():
    source = vidgen.inflate(tiny_unet2d(seed=3))
    randomise_temporal(source, seed=4)
    target = vidgen.inflate(tiny_unet2d(seed=0))
    report = target.load_reference_state_dict(source.state_dict())
    assert not report.problems and report.loaded == len(source.state_dict())
    for key, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], tensor)

    # A checkpoint of a 2-D UNet (no temporal layers) and one with an unknown key.
    broken = {k: v for k, v in source.state_dict().items() if "_temp." not in k}
    broken["down_blocks.0.attentions.0.transformer_blocks.0.attn1.query.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError) as info:
        target.load_reference_state_dict(broken)
    message = str(info.value)
    assert "attn_temp.to_q.weight: missing from the checkpoint: it holds no temporal layers" in message
    assert "attn1.query.weight: old diffusers attention naming" in message
    report = target.load_reference_state_dict(broken, strict=False)
    assert len(report.problems) == 1 + sum("_temp." in k for k in source.state_dict())


def test_tuneavideo_folder_loads(tmp_path):
    # A folder as the reference code saves it: its UNet3DConditionModel config (3-D block names,
    # keys our config does not have) and a pickled state dict with the same parameter names.
    source = vidgen.inflate(tiny_unet2d(seed=3))
    randomise_temporal(source, seed=4)
    config = {k: v for k, v in source.config.items() if k not in ("frame_attention", "mid_block_type")}
    config.update(_class_name="UNet3DConditionModel", _diffusers_version="0.11.1",
                  down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"], up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"])
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    torch.save(source.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")
    loaded = VideoUNet.from_tuneavideo(tmp_path)
    assert loaded.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_conv_projection_checkpoint_loads_into_linear_projection_model():
    # SD 1.x checkpoints have 1x1-conv proj_in/proj_out, SD 2.x linear: the same numbers.
    source = vidgen.inflate(tiny_unet2d(seed=3, linear_projection=False))
    target = vidgen.inflate(tiny_unet2d(seed=0, linear_projection=True))
    report = target.load_reference_state_dict(source.state_dict())
    assert not report.problems
    key = "down_blocks.0.attentions.0.proj_in.weight"
    torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key][:, :, 0, 0], rtol=0, atol=0)


def test_bad_inputs_are_refused_clearly():
    unet = vidgen.inflate(tiny_unet2d())
    sample, timestep, text = _inputs(videos=2, frames=2)
    with pytest.raises(ValueError, match="sample: expected"):
        unet(sample[:, :, 0], timestep, text)
    with pytest.raises(ValueError, match="encoder_hidden_states: expected \\(2, L, C\\)"):
        unet(sample, timestep, text.repeat_interleave(2, dim=0))
    with pytest.raises(ValueError, match="timestep: expected"):
        unet(sample, torch.tensor([1, 2, 3]), text)
    with pytest.raises(ValueError, match="different roles"):
        unet.set_attn_processor(unet.attn_processors["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"])
    with pytest.raises(ValueError, match="xformers attention would replace"):
        unet.enable_xformers_memory_efficient_attention()
    with pytest.raises(ValueError, match="sliced attention would replace"):
        unet.set_attention_slice("auto")
    with pytest.raises(TypeError, match="already a VideoUNet"):
        vidgen.inflate(unet)
    with pytest.raises(FileNotFoundError, match="no diffusers UNet"):
        VideoUNet.from_pretrained_2d("/nonexistent/model")


def test_from_pretrained_2d_is_strict(tmp_path):
    from safetensors.torch import save_file

    path = save_2d(tmp_path, tiny_unet2d())
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("conv_in.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"missing \['conv_in.weight'\], unexpected \['extra.weight'\]"):
        VideoUNet.from_pretrained_2d(path)


def test_gradients_flow_to_tuned_parameters():
    unet = vidgen.inflate(tiny_unet2d())
    randomise_temporal(unet)
    sample, timestep, text = _inputs(videos=1, frames=3)
    with vidgen.ops.use_backend("torch"):
        unet(sample, timestep[:1], text).sample.square().mean().backward()
    block = unet.video_blocks()[0]
    for param in (block.attn1.to_q.weight, block.attn2.to_q.weight, block.attn_temp.to_q.weight, block.attn_temp.to_out[0].weight):
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    unet = vidgen.inflate(tiny_unet2d())
    randomise_temporal(unet)
    sample, timestep, text = _inputs(videos=1, frames=3)
    grads = []
    with vidgen.ops.use_backend("torch"):
        for checkpointing in (False, True):
            unet.zero_grad()
            if checkpointing:
                unet.enable_gradient_checkpointing()
            unet(sample, timestep[:1], text).sample.square().mean().backward()
            grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if "_temp." in n or "norm1" in n})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
