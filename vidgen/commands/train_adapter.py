"""``vidgen train-adapter``: train a small Video Adapter model on a folder of captioned videos.

Sample with the frozen prior composed in: ``vidgen sample --model OUT --prior MODEL``. Data
parallel on several GPUs (or CPU processes): ``accelerate launch -m vidgen.cli train-adapter ...``.
"""
from __future__ import annotations

import argparse
import sys

from .. import default_model
from .tune import add_training_arguments, report, settings_from_args


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,128, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vidgen train-adapter", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the prior's local diffusers folder (VAE, text encoder, scheduler); "
                                        "default: the built-in random-weight model")
    parser.add_argument("--arch", choices=default_model.ARCHS, default="tiny",
                        help="architecture of the built-in model when --model is not given")
    parser.add_argument("--data", required=True, help="folder of videos with sidecar .txt captions")
    parser.add_argument("--captions", help="JSON file: video name -> caption (instead of sidecar files)")
    parser.add_argument("--channels", type=_channels, default=(64, 128), help="small UNet widths per level")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--norm-groups", type=int, default=32)
    parser.add_argument("--attention", choices=("sparse_causal", "first_frame"), default="sparse_causal",
                        help="frame attention of the small model")
    parser.add_argument("--batch-size", type=int, default=1, help="videos per step per process")
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout, for guidance")
    add_training_arguments(parser, steps=1000, lr=1e-4, checkpointing=False)
    args = parser.parse_args(argv)
    from ..train import AdapterConfig, train_adapter

    try:
        settings = settings_from_args(args)
        config = AdapterConfig(channels=args.channels, layers_per_block=args.layers_per_block, heads=args.heads,
                               norm_groups=args.norm_groups, frame_attention=args.attention)
        model_dir = args.model or default_model.ensure(args.arch)
        result = train_adapter(model_dir, args.data, args.out, captions=args.captions, frames=args.frames,
                               height=args.height, width=args.width, stride=args.stride, config=config,
                               batch_size=args.batch_size, uncond_prob=args.uncond_prob, noise=args.noise,
                               noise_alpha=args.noise_alpha, prediction_type=args.prediction_type,
                               use_vidgen_ops=not args.reference_attention, settings=settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vidgen train-adapter: {exc}", file=sys.stderr)
        return 2
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
