"""One rank of a frame-parallel test run (tests/test_frame_parallel.py starts one process per rank).

    python tests/frame_parallel_worker.py RANK WORLD PORT SD_DIR OUT_DIR SCENARIO[,SCENARIO...]

Each scenario builds the same tiny pipeline (seeded), patches it with ``frame_parallel`` and samples;
rank r writes ``OUT_DIR/<scenario>.rank<r>.pt`` with the final latents and frames. The test compares
them with one process's result. Scenario ``raise`` makes rank 1 raise in the middle of a step.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch

# Whole pipelines, sampled by video_case. name: (frames, guidance-parallel, guidance scale, pipeline)
VIDEO_CASES = {
    "latte": (6, False, 5.0, "latte"),
    "latte_uneven_guidance_parallel": (5, True, 5.0, "latte"),
    "free_noise": (9, False, 3.0, "free_noise"),
    "free_noise_guidance_parallel": (10, True, 3.0, "free_noise"),
    "text_to_video": (6, False, 3.0, "text_to_video"),
    "text_to_video_guidance_parallel": (6, True, 3.0, "text_to_video"),
}
# name: (frames, guidance-parallel, guidance scale)
SCENARIOS = {
    "animatediff": (16, False, 3.0),
    "animatediff_guidance_parallel": (16, True, 3.0),
    "animatediff_uneven": (7, False, 3.0),
    "animatediff_uneven_guidance_parallel": (7, True, 3.0),
    "animatediff_14": (14, False, 3.0),
    "animatediff_14_guidance_parallel": (14, True, 3.0),
    "raise": (4, False, 3.0),
    "too_many_ranks": (1, False, 3.0),
    "mismatched_prompts": (4, False, 3.0),
    "tuneavideo": (8, False, 3.0),
    "tuneavideo_guidance_parallel": (8, True, 3.0),
    "unet3d": (8, False, 3.0),
    "unet3d_guidance_parallel": (6, True, 3.0),
    "svd": (5, False, 2.5),
    "svd_guidance_parallel": (5, True, 2.5),
    **{name: case[:3] for name, case in VIDEO_CASES.items()},
}
SIZE = 64  # pixels: 8x8 latents


def animatediff_pipeline(sd_dir: str):
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    torch.manual_seed(2)
    adapter = MotionAdapter(block_out_channels=unet.config.block_out_channels, motion_layers_per_block=1,
                            motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=32)
    with torch.no_grad():  # real (non-zero) output projections, so the motion modules matter
        for name, param in adapter.named_parameters():
            if "proj_out" in name:
                param.normal_(0, 0.2)
    pipe = AnimateDiffPipeline.from_pretrained(sd_dir, motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    pipe.tokenizer.model_max_length = min(pipe.tokenizer.model_max_length, 77)
    return pipe


def sample(pipe, frames: int, guidance_scale: float, prompt: str = "a cat") -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, decoded frames) of a 2-step run."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    video = pipe(prompt, num_frames=frames, height=SIZE, width=SIZE, num_inference_steps=2,
                 guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="pt",
                 callback_on_step_end=keep_latents).frames
    return final["latents"], video


def tuneavideo_unet(sd_dir: str):
    """Tune-A-Video's video UNet (sparse-causal attn1), its temporal attention's output made non-zero."""
    from vidgen.sampling import VideoModel

    torch.manual_seed(4)  # inflation draws the new temporal layers' weights
    model = VideoModel.from_pretrained(sd_dir, frame_mode="sparse_causal")
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "attn_temp.to_out.0.weight" in name:
                param.normal_(0, 0.2)
    return model


def invert_then_sample(model, frames: int, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T of a 2-step DDIM inversion of a clean video, x_0 of 2 guided steps from it)."""
    from vidgen.sampling import denoise, encode_prompt, invert

    gen = torch.Generator().manual_seed(5)
    clean = torch.randn(1, 4, frames, SIZE // 8, SIZE // 8, generator=gen)
    empty, cond = encode_prompt(model, [""]), encode_prompt(model, ["a cat"])
    x_t = invert(model.unet, clean, empty, scheduler=model.scheduler, num_inference_steps=2, progress=False)
    x_0 = denoise(model.unet, x_t, cond, empty, scheduler=model.scheduler, num_inference_steps=2,
                  guidance_scale=guidance_scale, progress=False)
    return x_t, x_0


def unet3d() -> torch.nn.Module:
    """A tiny UNet3DConditionModel (ModelScope text-to-video's UNet: temporal
    convolutions, temporal transformers, transformer_in), every temporal weight non-zero."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(6)
    unet = UNet3DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")).eval()  # no dropout, as from_pretrained gives it
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "conv4.3" in name or ("temp_attentions" in name and "proj_out" in name):
                param.normal_(0, 0.05)  # non-zero, small enough that fp32 rounding is not amplified
    return unet


def unet3d_run(unet, frames: int, guidance_scale: float) -> torch.Tensor:
    """x_0 of 2 guided DDIM steps."""
    from diffusers import DDIMScheduler

    from vidgen.sampling import denoise

    gen = torch.Generator().manual_seed(7)
    x_t = torch.randn(1, 4, frames, 8, 8, generator=gen)
    cond, uncond = torch.randn(1, 5, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD's, as ModelScope's
    return denoise(unet, x_t, cond, uncond, scheduler=scheduler, num_inference_steps=2,
                   guidance_scale=guidance_scale, progress=False)


# ---- Stable Video Diffusion --------------------------------------------------------------------
SVD_SIZE = 16  # pixels: 8x8 latents (its tiny VAE scales by 2), 4x4 in the UNet's lower level
SVD_DECODE_CHUNK = 2  # 5 frames decode in 3 chunks (2, 2, 1): 2 ranks decode 2 and 1


def svd_pipeline():
    """The built-in tiny Stable Video Diffusion pipeline, every temporal ResNet's and temporal block's output
    non-zero and its temporal mix factors moved off 0.5, so the frame-mixing layers matter."""
    from vidgen.default_model import svd_pipeline as build

    from diffusers import EulerDiscreteScheduler

    pipe = build("tiny", seed=8)
    # SVD's sigma_max (700) makes the first Euler step x + dt * d of two ~3000-sized terms whose sum is ~1:
    # one ulp of them (2.4e-4) would hide what this test measures; 20 keeps the rest of the schedule
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, sigma_max=20.0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "mix_factor" in name:
                param.fill_(-1.0)  # sigmoid: 0.27 of the spatial path, 0.73 of the temporal one
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------
# Whole pipelines sampled by video_case (the same call in the ranks and in the test's one process):
# Latte (LattePipeline: its transformer and its 2-D VAE's decode_latents(latents, video_length)),
# AnimateDiff with FreeNoise windows across the shard boundary, and diffusers' TextToVideoSDPipeline
# (a UNet3DConditionModel pipeline).
# ----------------------------------------------------------------------------------------------
def free_noise_pipeline(sd_dir: str):
    """AnimateDiff with FreeNoise windows of 4 frames, 2 apart: on 2 ranks windows straddle the shard
    boundary (9 frames: 5 + 4, the windows [2, 6) and [4, 8), and the extra last window [5, 9))."""
    pipe = animatediff_pipeline(sd_dir)
    pipe.enable_free_noise(context_length=4, context_stride=2, weighting_scheme="pyramid")
    return pipe


def text_to_video_pipeline(sd_dir: str):
    """diffusers' TextToVideoSDPipeline (ModelScope's) on the tiny SD's VAE, text encoder and tokenizer
    with :func:`unet3d` as its UNet."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = TextToVideoSDPipeline(vae=AutoencoderKL.from_pretrained(sd_dir, subfolder="vae"),
                                 text_encoder=CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder"),
                                 tokenizer=CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer"),
                                 unet=unet3d(), scheduler=DDIMScheduler.from_pretrained(sd_dir, subfolder="scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def svd_sample(pipe, frames: int, max_guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, decoded frames) of a 2-step run with SVD's per-frame classifier-free guidance."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    from PIL import Image

    pixels = torch.rand(SVD_SIZE, SVD_SIZE, 3, generator=torch.Generator().manual_seed(9)) * 255
    image = Image.fromarray(pixels.byte().numpy())  # a PIL image: the pipeline resizes it for its image encoder
    video = pipe(image, num_frames=frames, height=SVD_SIZE, width=SVD_SIZE, num_inference_steps=2,
                 min_guidance_scale=1.0, max_guidance_scale=max_guidance_scale, decode_chunk_size=SVD_DECODE_CHUNK,
                 generator=torch.Generator().manual_seed(0), output_type="pt", callback_on_step_end=keep_latents).frames
    return final["latents"], video


def video_case(name: str, sd_dir: str, **patch_options) -> dict[str, torch.Tensor]:
    """The final latents and decoded frames of scenario ``name`` (a VIDEO_CASES entry), its pipeline
    patched with ``patch_options``."""
    import vidgen

    frames, _, scale, builder = VIDEO_CASES[name]
    if builder == "latte":
        from diffusers import DDIMScheduler
        from test_latte import tiny_pipeline

        pipe = tiny_pipeline(frames)
        pipe.scheduler = DDIMScheduler(clip_sample=False)  # latents not clipped to [-1, 1]: every error shows
        pipe = vidgen.patch(pipe, **patch_options)
        final = {}
        gen = torch.Generator().manual_seed(1)
        text, negative = torch.randn(1, 6, 32, generator=gen), torch.randn(1, 6, 32, generator=gen)
        video = pipe(prompt_embeds=text, negative_prompt=None, negative_prompt_embeds=negative, num_inference_steps=2,
                     guidance_scale=scale, height=8, width=8, video_length=frames, output_type="pt",
                     generator=torch.Generator().manual_seed(0), clean_caption=False, mask_feature=False,
                     callback_on_step_end=lambda pipe, step, t, tensors: final.update(tensors) or tensors).frames
        return {"latents": final["latents"], "frames": video}
    if builder == "free_noise":
        return dict(zip(("latents", "frames"), sample(vidgen.patch(free_noise_pipeline(sd_dir), **patch_options),
                                                      frames, scale)))
    pipe = vidgen.patch(text_to_video_pipeline(sd_dir), **patch_options)
    final = {}
    video = pipe("a cat", num_frames=frames, height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=scale,
                 generator=torch.Generator().manual_seed(0), output_type="pt",
                 callback=lambda step, t, latents: final.update(latents=latents)).frames
    return {"latents": final["latents"], "frames": video}


def main(rank: int, world: int, port: int, sd_dir: str, out_dir: str, scenarios: list[str]) -> None:
    import torch.distributed as dist

    import vidgen

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        with vidgen.ops.use_backend("torch"):
            for name in scenarios:
                frames, guidance_parallel, scale = SCENARIOS[name]
                if name in VIDEO_CASES:
                    torch.save(video_case(name, sd_dir, frame_parallel=True, guidance_parallel=guidance_parallel),
                               os.path.join(out_dir, f"{name}.rank{rank}.pt"))
                    continue
                if name.startswith("unet3d"):
                    unet = vidgen.patch(unet3d(), frame_parallel=True, guidance_parallel=guidance_parallel)
                    torch.save({"latents": unet3d_run(unet, frames, scale)}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
                    continue
                if name.startswith("svd"):
                    pipe = vidgen.patch(svd_pipeline(), frame_parallel=True, guidance_parallel=guidance_parallel)
                    latents, video = svd_sample(pipe, frames, scale)
                    torch.save({"latents": latents, "frames": video}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
                    continue
                if name.startswith("tuneavideo"):
                    model = tuneavideo_unet(sd_dir)
                    vidgen.patch(model.unet, frame_parallel=True, guidance_parallel=guidance_parallel)
                    inverted, latents = invert_then_sample(model, frames, scale)
                    torch.save({"inverted": inverted, "latents": latents}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
                    continue
                pipe = vidgen.patch(animatediff_pipeline(sd_dir), frame_parallel=True,
                                    guidance_parallel=guidance_parallel)
                if name == "raise" and rank == 1:  # in the middle of the UNet, while rank 0 exchanges frames
                    module, calls = pipe.unet.mid_block.motion_modules[0], []

                    def failing_forward(*args, _forward=module.forward, **kwargs):
                        calls.append(1)
                        if len(calls) == 2:
                            raise RuntimeError("rank 1 fails in the middle of step 2")
                        return _forward(*args, **kwargs)

                    module.forward = failing_forward
                if name in ("too_many_ranks", "mismatched_prompts"):  # refused on every rank, before the UNet runs
                    try:
                        sample(pipe, frames, scale, prompt="a dog" if name == "mismatched_prompts" and rank else "a cat")
                    except ValueError as refusal:
                        with open(os.path.join(out_dir, f"{name}.rank{rank}.txt"), "w") as f:
                            f.write(str(refusal))
                    continue
                latents, video = sample(pipe, frames, scale)
                torch.save({"latents": latents, "frames": video}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, port = map(int, sys.argv[1:4])
    main(rank, world, port, sys.argv[4], sys.argv[5], sys.argv[6].split(","))
