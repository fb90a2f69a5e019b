"""The moving-shapes model's diffusers components, built in code: a word-level CLIP tokenizer over
the grammar's vocabulary, a tiny CLIP text encoder, a tiny VAE (32x32 pixels to 8x8 latents),
a tiny text-to-image UNet and Stable Diffusion 1.5's DDIM scheduler, saved as an ordinary
Stable-Diffusion-layout folder that ``VideoModel.from_pretrained`` (and so every ``vidgen``
command) loads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from ..default_model import SD15_SCHEDULER, atomic_folder
from . import data

TOKENS = 8  # <|startoftext|> + the five words of a caption + <|endoftext|>, padded to 8

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, sample_size=data.SIZE, latent_channels=8, block_out_channels=(16, 16, 32),
    layers_per_block=1, norm_num_groups=1,  # one group: per-channel statistics would normalise the colour away
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    mid_block_add_attention=False)
LATENT_FACTOR = 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)
LATENT_SIZE = data.SIZE // LATENT_FACTOR
TEXT_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=TOKENS, projection_dim=32)
UNET_CONFIG = dict(
    sample_size=LATENT_SIZE, in_channels=VAE_CONFIG["latent_channels"], out_channels=VAE_CONFIG["latent_channels"],
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=4, norm_num_groups=8,  # 4 heads: head dims 8 and 16, which vidgen's attention kernels run
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# Stable Diffusion 1.5's betas rescaled to a zero terminal SNR, sampled from t=999 ("trailing"),
# with v-prediction (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are
# Flawed"; Stable Diffusion 2's v-models). With SD 1.5's own schedule, the noisiest training input
# still keeps sqrt(alphas_cumprod[999]) = 0.068 of the clean latents, and on 8x8 latents that is
# enough to read where the shape is: a model trained so learns to take the layout from its input,
# never from the caption or the other frames, and at sampling time, when the input is pure noise,
# puts the shape wherever the noise suggests, frame by frame (docs/RESULTS.md, "Why the first
# models did not learn motion").
SCHEDULER_CONFIG = dict(SD15_SCHEDULER, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                        prediction_type="v_prediction")


def build_tokenizer(path: str):
    """Write a CLIP tokenizer to ``path`` that reads every word of the grammar as one token and
    declares the grammar's words as its closed vocabulary (:mod:`vidgen.vocabulary`).

    Its merges are learnt by ``tokenizers``' BPE trainer on the vocabulary, run until each word
    is one symbol; ``vocab.json``/``merges.txt`` are written too, for transformers releases
    that read those."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[1], end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(data.VOCABULARY, trainers.BpeTrainer(
        vocab_size=10_000, min_frequency=1, special_tokens=list(SPECIAL_TOKENS), end_of_word_suffix="</w>",
        show_progress=False))
    state = json.loads(bpe.to_str())["model"]
    vocab = state["vocab"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["merges"]]
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        with open(files[0], "w") as f:
            json.dump(vocab, f)
        with open(files[1], "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(*files, model_max_length=TOKENS, closed_vocabulary=list(data.VOCABULARY))
        tokenizer.save_pretrained(path)
        for name in files:
            shutil.copy(name, path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    split = [w for w in data.VOCABULARY if len(tokenizer(w).input_ids) != 3]
    if split:
        raise RuntimeError(f"tokenizer: the words {split} do not map to one token each")
    return tokenizer


def build_text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       **TEXT_CONFIG))


def build_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def save_model(path: str, *, unet, vae, text_encoder, tokenizer_dir: str, scheduler) -> str:
    """Write a Stable-Diffusion-layout folder at ``path`` (replaced atomically) through diffusers'
    own ``save_pretrained`` (safetensors); the tokenizer folder is copied as ``build_tokenizer``
    wrote it."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with atomic_folder(path) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        shutil.copytree(tokenizer_dir, os.path.join(staging, "tokenizer"), dirs_exist_ok=True)
    return path
