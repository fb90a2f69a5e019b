"""The built-in default models: the trained moving-shapes model, and Stable-Diffusion-layout
folders with random weights.

``shapes`` (the default) is a tiny text-to-video model trained here on procedural moving shapes
(``make reproduce``, docs/RESULTS.md); its weights ship with the package, so ``vidgen sample``
without ``--model`` draws the colour and shape its prompt names ("a red square moves left"; the
direction word it does not follow yet). Its captions come from a small grammar, and other words
are refused (:mod:`vidgen.vocabulary`).

No weights are downloaded, ever: ``tiny`` is a random-weight SD layout small enough for a CPU
run of the whole sampling path in about a minute; ``sd15`` has the full SD1.5 architecture
(UNet, VAE, CLIP text encoder) for realistic timings on a GPU. Both are written once as an
ordinary diffusers folder (the same loading path as a user's model) under ``$VIDGEN_CACHE``
(default ``~/.cache/vidgen``). All three load as any diffusers folder does.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import torch

from .ops import cache_dir

ARCHS = ("shapes", "tiny", "sd15")
DEFAULT_ARCH = "shapes"
RANDOM_ARCHS = ("tiny", "sd15")  # built on first use, random weights
# The trained moving-shapes model, package data (written by make reproduce: vidgen/shapes/report.py).
SHAPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes", "model")
_FORMAT_VERSION = 2

# SD1.5's scheduler configuration (METHODS.md section 5).
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)

_CONFIGS = {
    "tiny": dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                  attention_head_dim=4, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(sample_size=128, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8,
                 latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=32),
    ),
    "sd15": dict(
        unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                  cross_attention_dim=768, attention_head_dim=8),
        vae=dict(sample_size=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=77, projection_dim=768),
    ),
}


def _write_tokenizer(path: str) -> None:
    """A byte-level CLIP tokenizer with no merges (one token per byte), written in code."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                      model_max_length=77).save_pretrained(path)


def build(path: str, arch: str = "tiny", seed: int = 0) -> str:
    """Write a random-weight SD-layout diffusers folder for ``arch`` at ``path`` (atomically)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if arch not in RANDOM_ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(RANDOM_ARCHS)} (random weights), got {arch!r}")
    config = _CONFIGS[arch]
    torch.manual_seed(seed)
    with atomic_folder(path) as staging:
        _write_tokenizer(os.path.join(staging, "tokenizer"))
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(staging, "tokenizer"))
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id, **config["text"]))
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**config["vae"]), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=UNet2DConditionModel(**config["unet"]), scheduler=DDIMScheduler(**SD15_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(staging, safe_serialization=True)
        with open(os.path.join(staging, "vidgen_default_model.json"), "w") as f:
            json.dump({"arch": arch, "seed": seed, "format": _FORMAT_VERSION}, f)
    return path


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yields a fresh folder beside ``path`` to write into; on success it replaces ``path`` (a
    reader sees the old folder or the complete new one), on failure it is removed."""
    import uuid

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir applies the umask, as a folder save_pretrained makes would have it (mkdtemp's is 0700).
    staging = os.path.join(parent, f".building-{os.path.basename(path)}-{uuid.uuid4().hex[:12]}")
    os.mkdir(staging)
    try:
        yield staging
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure(arch: str = DEFAULT_ARCH) -> str:
    """The default model folder for ``arch``: the shipped trained model, or a random-weight one
    built in the cache on first use."""
    from filelock import FileLock  # a dependency of huggingface_hub, hence of diffusers

    if arch == "shapes":
        return shapes_dir()
    if arch not in RANDOM_ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    path = os.path.join(cache_dir(), f"default-{arch}-v{_FORMAT_VERSION}")
    marker = os.path.join(path, "vidgen_default_model.json")
    if not os.path.exists(marker):
        # Processes started together (accelerate launch) build it once: the others wait, then load it.
        os.makedirs(cache_dir(), exist_ok=True)
        with FileLock(path + ".lock"):
            if not os.path.exists(marker):
                build(path, arch)
    return path


def unet_config(arch: str) -> dict:
    """The UNet2DConditionModel configuration of the random-weight built-in model ``arch`` (a copy)."""
    if arch not in RANDOM_ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(RANDOM_ARCHS)}, got {arch!r}")
    return dict(_CONFIGS[arch]["unet"])


def motion_adapter(config, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A random-weight diffusers MotionAdapter sized to a UNet of ``config`` (its config, or
    :func:`unet_config`): 8 motion heads at full size, 2 on a small model."""
    from diffusers import MotionAdapter

    small = config["block_out_channels"][0] < 320
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=config["block_out_channels"],
                            motion_layers_per_block=config["layers_per_block"],
                            motion_num_attention_heads=2 if small else 8,
                            motion_norm_num_groups=config.get("norm_num_groups", 32)).to(dtype)
    for module in adapter.modules():  # a trained adapter's proj_out is not zero; random weights show its effect
        if type(module).__name__ == "AnimateDiffTransformer3D":
            torch.nn.init.normal_(module.proj_out.weight, std=0.02)
    return adapter


def shapes_dir() -> str:
    """The shipped moving-shapes model's folder (nothing to build)."""
    if not os.path.isfile(os.path.join(SHAPES_DIR, "model_index.json")):
        raise FileNotFoundError(f"arch: the moving-shapes model's weights are missing from {SHAPES_DIR} "
                                "(an install without package data?); make reproduce writes them")
    return SHAPES_DIR


def sampling_defaults(arch: str) -> dict:
    """What the built-in model samples best with: ``steps``, and for ``shapes`` also ``guidance`` and
    ``noise`` (the kind it was trained with), read from its folder without loading it."""
    if arch != "shapes":
        return {"steps": 10 if arch == "tiny" else 50}
    with open(os.path.join(shapes_dir(), "vidgen_model.json")) as f:
        return json.load(f)["sampling"]


def animatediff_pipeline(model_dir: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """An AnimateDiff pipeline: the SD folder's components plus a random-weight MotionAdapter sized to its UNet.

    Linear betas, as AnimateDiff trains with (METHODS.md section 5), on a DDIM scheduler.
    """
    from diffusers import AnimateDiffPipeline, DDIMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=dtype)
    adapter = motion_adapter(sd.unet.config, dtype, seed)
    return AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                               motion_adapter=adapter,
                               scheduler=DDIMScheduler.from_config(sd.scheduler.config, beta_schedule="linear"))


# Stable Video Diffusion (image-to-video) at its full size ("svd": the UNet, temporal-decoder VAE and
# ViT-H/14 image encoder of SVD / SVD-XT, whose architectures are the same) or as diffusers' own
# pipeline test components ("tiny", with a 224-pixel image encoder so a PIL image goes through).
SVD_ARCHS = ("tiny", "svd")
SVD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                     num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                     steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
_SVD_CONFIGS = {
    "tiny": dict(
        unet=dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
                  down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                  up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
                  num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32),
        vae=dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4),
        image=dict(hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=224,
                   intermediate_size=37, patch_size=14),
    ),
    "svd": dict(
        unet=dict(sample_size=96, num_frames=25),  # diffusers' defaults are SVD's UNet
        vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 layers_per_block=2, latent_channels=4, sample_size=768),
        image=dict(hidden_size=1280, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, intermediate_size=5120, patch_size=14, hidden_act="gelu"),
    ),
}


def svd_pipeline(arch: str = "tiny", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 seed: int = 0):
    """A Stable Video Diffusion pipeline with random weights (nothing downloaded), built on ``device``."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if arch not in SVD_ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(map(repr, SVD_ARCHS))}, got {arch!r}")
    config = _SVD_CONFIGS[arch]
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: the full size has 2.3 billion parameters
        unet = UNetSpatioTemporalConditionModel(**config["unet"])
        vae = AutoencoderKLTemporalDecoder(**config["vae"])
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image"]))
    size = config["image"]["image_size"]
    pipe = StableVideoDiffusionPipeline(unet=unet, image_encoder=encoder, vae=vae,
                                        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
                                        feature_extractor=CLIPImageProcessor(crop_size=size, size=size))
    return pipe.to(dtype=dtype)
