"""``vidgen invert --video SRC``: DDIM inversion of a video (Tune-A-Video: empty prompt, no guidance).

Writes the inverted latents x_T to a safetensors file (key ``latents``, (1, C, F, h, w)) and,
with ``--reconstruct``, the video sampled back from them with the given prompt.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .sample import add_model_arguments, load_source_video, resolve_dtype, resolve_model_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vidgen invert", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--video", required=True, help="source video (.mp4/.gif/folder of frames)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="inverted_latents.safetensors")
    parser.add_argument("--reconstruct", help="also denoise x_T back (prompt --prompt) and write this video")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    from ..sampling import VideoModel, decode_latents, denoise, encode_prompt, encode_video, invert
    from ..video_io import write_video

    device, dtype = torch.device(args.device), resolve_dtype(args)
    try:
        model = VideoModel.from_pretrained(resolve_model_dir(args), frame_attention=args.attention,
                                           torch_dtype=dtype, device=device)
        factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
        size = model.unet.config.sample_size * factor
        source = load_source_video(args.video, args.frames, size, size).to(device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vidgen invert: {exc}", file=sys.stderr)
        return 2
    empty = encode_prompt(model, [""])
    x_t = invert(model.unet, encode_video(model, source), empty, scheduler=model.scheduler,
                 num_inference_steps=args.steps, progress=not args.quiet)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({"latents": x_t.contiguous().cpu()}, args.out)
    print(f"wrote {args.out} (latents {tuple(x_t.shape)})")
    if args.reconstruct:
        cond = encode_prompt(model, [args.prompt])
        x0 = denoise(model.unet, x_t, cond, empty, scheduler=model.scheduler, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, progress=not args.quiet)
        frames = (decode_latents(model, x0)[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        print(f"wrote {write_video(args.reconstruct, frames)}")
    return 0
