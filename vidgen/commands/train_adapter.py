"""``vidgen train-adapter``: train a small Video Adapter model on a folder of captioned videos.

Sample with the frozen prior composed in: ``vidgen sample --model OUT --prior MODEL``. Data
parallel on several GPUs (or CPU processes): ``accelerate launch -m vidgen.cli train-adapter ...``.
"""
from __future__ import annotations

import argparse
import os

from .. import default_model
from . import _args
from ._args import UsageError
from .tune import add_training_arguments, check_training_arguments, check_training_output, report, settings_from_args


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,128, got {text!r}") from None
    if len(channels) < 2 or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths such as 64,128, got {text!r}")
    return channels


def build_parser() -> argparse.ArgumentParser:
    from ..integration.video_unet import INFLATION_MODES

    parser = _args.parser("vidgen train-adapter", __doc__)
    parser.add_argument("--model", help="the prior's local diffusers folder (VAE, text encoder, scheduler) "
                                        "(default: the built-in random-weight model)")
    parser.add_argument("--arch", choices=default_model.RANDOM_ARCHS, default="tiny",
                        help="the built-in random-weight model when --model is not given")
    parser.add_argument("--data", required=True, help="folder of videos with sidecar .txt captions")
    parser.add_argument("--captions", help="JSON file: video name -> caption (instead of sidecar files)")
    parser.add_argument("--channels", type=_channels, default=(64, 128),
                        help="small UNet widths per level (default: 64,128)")
    parser.add_argument("--layers-per-block", type=_args.positive_int, default=1, help="ResNet layers per UNet level")
    parser.add_argument("--heads", type=_args.positive_int, default=4, help="attention heads of the small UNet")
    parser.add_argument("--norm-groups", type=_args.positive_int, default=32, help="GroupNorm groups")
    parser.add_argument("--frame-mode", choices=INFLATION_MODES, default="sparse_causal",
                        help="frame attention of the small model: Tune-A-Video's sparse_causal or LAMP's first_frame")
    parser.add_argument("--batch-size", type=_args.positive_int, default=1, help="videos per step per process")
    parser.add_argument("--uncond-prob", type=_args.probability, default=0.1, help="caption dropout, for guidance")
    add_training_arguments(parser, steps=1000, lr=1e-4, checkpointing=False)
    return parser


def check_arguments(args) -> None:
    from ..ops.frame_attention import frame_attention_unsupported_reason
    from ..ops.temporal_attention import temporal_attention_unsupported_reason

    check_training_arguments(args)
    _args.check_folder("--data", args.data, "a folder of videos with captions")
    if args.captions is not None and not os.path.isfile(args.captions):
        raise UsageError(f"--captions: {args.captions} is not a file (expected a JSON object of video name -> caption)")
    uneven = [c for c in args.channels if c % args.norm_groups or c % args.heads]
    if uneven:
        raise UsageError(f"--channels: every width must divide by --norm-groups {args.norm_groups} and --heads "
                         f"{args.heads}; {', '.join(map(str, uneven))} do not")
    # The attention of every level but the deepest, and of the middle block at the deepest width,
    # runs on vidgen's kernels: each head dim must be one they take.
    head_dims = sorted({c // args.heads for c in args.channels})
    for head_dim in head_dims:
        reason = frame_attention_unsupported_reason(head_dim) or temporal_attention_unsupported_reason(head_dim)
        if reason is not None:
            raise UsageError(f"--heads: {args.heads} heads give attention head dims {head_dims} at widths "
                             f"{list(args.channels)}: {reason}")
    check_training_output(args)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except UsageError as exc:
        return _args.fail(parser, exc)
    from ..train import AdapterConfig, train_adapter

    try:
        with _args.quiet_libraries(args.quiet), _args.removing_new_empty_folders(args.out):
            settings = settings_from_args(args)
            config = AdapterConfig(channels=args.channels, layers_per_block=args.layers_per_block, heads=args.heads,
                                   norm_groups=args.norm_groups, frame_mode=args.frame_mode)
            model_dir = args.model or default_model.ensure(args.arch)
            result = train_adapter(model_dir, args.data, args.out, captions=args.captions, frames=args.frames,
                                   height=args.height, width=args.width, stride=args.stride, config=config,
                                   batch_size=args.batch_size, uncond_prob=args.uncond_prob, noise=args.noise,
                                   noise_alpha=args.noise_alpha, prediction_type=args.prediction_type,
                                   use_vidgen_ops=not args.reference_attention, settings=settings)
    except (OSError, ValueError) as exc:  # OSError: a model file missing or unreadable
        return _args.fail(parser, exc)
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
