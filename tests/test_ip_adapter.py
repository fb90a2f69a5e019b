"""IP-Adapter on a patched AnimateDiff pipeline: loaded, scaled and unloaded after patching.

The IP-Adapter weights are diffusers' own test recipe (create_ip_adapter_state_dict: decoupled
image key/value projections on every text cross-attention, an ImageProjection) built in code,
and the image encoder a tiny CLIPVisionModelWithProjection; both are saved to a folder and loaded
through the pipeline's public ``load_ip_adapter``. Patched outputs equal unpatched ones in fp32.
"""
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor
from diffusers.models.embeddings import ImageProjection
from PIL import Image
from test_free_noise import close, op_calls  # noqa: F401  (a fixture)
from test_patching import FRAMES, _animatediff_pipeline, sd_dir  # noqa: F401
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

import vidgen


def ip_adapter_state_dict(unet) -> dict:
    """diffusers' create_ip_adapter_state_dict (tests/models/unets/test_models_unet_2d_condition.py)."""
    torch.manual_seed(4)
    cross_attention, key_id = {}, 1
    channels = unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_module" in name:
            continue
        if name.startswith("mid_block"):
            hidden_size = channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden_size = channels[int(name[len("down_blocks.")])]
        sd = IPAdapterAttnProcessor(hidden_size=hidden_size, cross_attention_dim=unet.config.cross_attention_dim,
                                    scale=1.0).state_dict()
        cross_attention[f"{key_id}.to_k_ip.weight"] = sd["to_k_ip.0.weight"]
        cross_attention[f"{key_id}.to_v_ip.weight"] = sd["to_v_ip.0.weight"]
        key_id += 2
    dim = unet.config.cross_attention_dim
    sd = ImageProjection(cross_attention_dim=dim, image_embed_dim=dim, num_image_text_embeds=4).state_dict()
    projection = {"proj.weight": sd["image_embeds.weight"], "proj.bias": sd["image_embeds.bias"],
                  "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"]}
    return {"image_proj": projection, "ip_adapter": cross_attention}


@pytest.fixture(scope="module")
def ip_adapter_dir(sd_dir, tmp_path_factory):
    """A folder laid out as the Hub's h94/IP-Adapter: models/ip.bin and models/image_encoder/."""
    root = tmp_path_factory.mktemp("ip-adapter")
    pipe = _animatediff_pipeline(sd_dir)
    (root / "models").mkdir()
    torch.save(ip_adapter_state_dict(pipe.unet), root / "models" / "ip.bin")
    torch.manual_seed(5)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=pipe.unet.config.cross_attention_dim, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, image_size=32, patch_size=8)).save_pretrained(
        root / "models" / "image_encoder")
    return root


def load(pipe, folder):
    pipe.load_ip_adapter(str(folder), subfolder="models", weight_name="ip.bin")


def generate(pipe, *, image=True, guidance=3.0):
    picture = Image.fromarray(np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return pipe("a cat", num_frames=FRAMES, height=32, width=32, num_inference_steps=2, guidance_scale=guidance,
                ip_adapter_image=picture if image else None, generator=torch.Generator().manual_seed(0),
                output_type="latent").frames


def test_ip_adapter_loaded_scaled_and_unloaded_after_patching(sd_dir, ip_adapter_dir, op_calls):
    pipe = _animatediff_pipeline(sd_dir)
    plain = generate(pipe, image=False)
    load(pipe, ip_adapter_dir)
    pipe.set_ip_adapter_scale(0.7)
    reference = generate(pipe)
    assert (reference - plain).abs().max() > 1e-3  # the image conditioning matters
    pipe.unload_ip_adapter()
    assert torch.equal(generate(pipe, image=False), plain)

    with vidgen.ops.use_backend("torch"):
        vidgen.patch(pipe)
        load(pipe, ip_adapter_dir)  # re-patches: the report names the IP-Adapter parts
        pipe.set_ip_adapter_scale(0.7)
        assert vidgen.is_patched(pipe) and vidgen.is_patched(pipe.unet)
        report = vidgen.patch_report(pipe)
        kept = {e.where: e for e in report.kept}
        assert kept["unet.encoder_hid_proj"].what == "IP-Adapter image projection"
        assert any("IP-Adapter" in e.what for e in report.kept if e.where.endswith("attn2"))
        assert not [e for e in report.kept if "motion" in e.what]
        close(generate(pipe), reference)
        assert op_calls  # the motion modules ran on vidgen's op
        pipe.unload_ip_adapter()
        assert vidgen.is_patched(pipe)
        assert not any("IP-Adapter" in e.what for e in vidgen.patch_report(pipe).kept)
        close(generate(pipe, image=False), plain)
    vidgen.unpatch(pipe)
    assert "load_ip_adapter" not in pipe.__dict__
    assert torch.equal(generate(pipe, image=False), plain)


@pytest.mark.slow
def test_ip_adapter_loaded_before_patching_without_guidance(sd_dir, ip_adapter_dir):
    pipe = _animatediff_pipeline(sd_dir)
    load(pipe, ip_adapter_dir)
    reference = generate(pipe, guidance=1.0)
    vidgen.patch(pipe)  # the interpreter's kernel
    close(generate(pipe, guidance=1.0), reference, tol=2e-4)
    vidgen.unpatch(pipe)
    assert torch.equal(generate(pipe, guidance=1.0), reference)
