"""``vidgen invert --video SRC``: DDIM inversion of a video (Tune-A-Video: empty prompt, no guidance).

Writes the inverted latents x_T (key ``latents``, (1, C, F, h, w)) to ``--out``: safetensors
for a .safetensors path, ``torch.save`` of the same dict for .pt/.pth. ``vidgen sample --latents``
samples from them; ``--reconstruct`` also writes the video sampled back with ``--prompt``.
"""
from __future__ import annotations

import torch

from . import _args
from ._args import UsageError
from ._models import (add_model_arguments, check_model_arguments, check_steps, check_vocabulary, load_video_model,
                      model_pixel_size, resolve_dtype, resolve_model_dir)
from .sample import save_latents


def build_parser():
    parser = _args.parser("vidgen invert", __doc__)
    add_model_arguments(parser)
    parser.add_argument("--video", required=True, help="source video (.mp4/.gif/folder of frames)")
    parser.add_argument("--frames", type=_args.positive_int, default=8, help="frames of the source video to invert")
    parser.add_argument("--steps", type=_args.positive_int, default=50, help="DDIM inversion steps")
    parser.add_argument("--out", default="inverted_latents.safetensors",
                        help=f"latents file: {', '.join(_args.LATENT_EXTENSIONS)}")
    parser.add_argument("--reconstruct", help="also denoise x_T back (prompt --prompt) and write this video "
                                              "(.mp4, .gif or a PNG folder)")
    parser.add_argument("--prompt", default="",
                        help="--reconstruct: the prompt to sample back with (default: the empty prompt)")
    parser.add_argument("--guidance", type=_args.non_negative_float, default=1.0,
                        help="--reconstruct: classifier-free guidance scale (1: none)")
    return parser


def check_arguments(args) -> None:
    check_model_arguments(args)
    check_steps(args)
    _args.check_latents_path("--out", args.out)
    if args.reconstruct:
        _args.check_video_out("--reconstruct", args.reconstruct)
        check_vocabulary(args, [("--prompt", args.prompt)])
    args.source_frames = _args.read_video_for("--video", args.video, args.frames)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except UsageError as exc:
        return _args.fail(parser, exc)
    from ..sampling import decode_latents, denoise, encode_prompt, encode_video, invert
    from ..video_io import frames_to_tensor, write_video

    device, dtype = torch.device(args.device), resolve_dtype(args)
    with _args.quiet_libraries(args.quiet):
        try:
            model = load_video_model(resolve_model_dir(args), frame_mode=args.frame_mode, torch_dtype=dtype,
                                     device=device)
            default_height, default_width = model_pixel_size(model)
            size = (args.height or default_height, args.width or default_width)
            source = frames_to_tensor(args.source_frames, size=size)[None].to(device)
        except (UsageError, OSError, ValueError) as exc:  # OSError: a model file missing or unreadable
            return _args.fail(parser, exc)
        empty = encode_prompt(model, [""])
        x_t = invert(model.unet, encode_video(model, source), empty, scheduler=model.scheduler,
                     num_inference_steps=args.steps, progress=not args.quiet)
        print(f"wrote {save_latents(args.out, x_t)} (latents {tuple(x_t.shape)})")
        if args.reconstruct:
            cond = encode_prompt(model, [args.prompt])
            x0 = denoise(model.unet, x_t, cond, empty, scheduler=model.scheduler, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, progress=not args.quiet)
            frames = (decode_latents(model, x0)[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            print(f"wrote {write_video(args.reconstruct, frames)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
