"""``vidgen tune``: one-shot Tune-A-Video (or LAMP) tuning of an image model on one video.

The output folder loads with ``vidgen sample --model OUT`` (add ``--video`` there to start
from the DDIM inversion of the source video, as Tune-A-Video samples).
"""
from __future__ import annotations

import argparse
import os

from .. import default_model
from . import _args
from ._args import UsageError

NOISE_KINDS = ("iid", "mixed", "progressive")
CHECKPOINT_NAME = "checkpoint.safetensors"  # vidgen.train.checkpoint.CHECKPOINT_NAME, without importing diffusers


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int, lr: float, checkpointing: bool) -> None:
    """Options shared by ``vidgen tune`` and ``vidgen train-adapter``."""
    parser.add_argument("--out", required=True, help="output folder: checkpoint, loss.png and the trained model")
    parser.add_argument("--frames", type=_args.positive_int, default=8, help="frames per training clip")
    parser.add_argument("--height", type=_args.pixels, default=None,
                        help="pixels, a multiple of 8 (default: the model's size)")
    parser.add_argument("--width", type=_args.pixels, default=None,
                        help="pixels, a multiple of 8 (default: the model's size)")
    parser.add_argument("--stride", type=_args.positive_int, default=1, help="take every stride-th frame")
    parser.add_argument("--steps", type=_args.positive_int, default=steps, help="optimizer steps")
    parser.add_argument("--lr", type=_args.positive_float, default=lr, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=_args.non_negative_float, default=1e-2, help="AdamW weight decay")
    parser.add_argument("--max-grad-norm", type=_args.positive_float, default=1.0, help="gradient clipping norm")
    parser.add_argument("--noise", choices=NOISE_KINDS, default="iid", help="training noise (PYoCo: mixed, progressive)")
    parser.add_argument("--noise-alpha", type=_args.non_negative_float, default=None,
                        help="PYoCo alpha (default: 1 mixed, 2 progressive)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                        help="training target (default: the model's scheduler's)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                        help="autocast dtype (fp16 uses loss scaling); default: fp16 on CUDA, no on CPU")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=checkpointing,
                        help="recompute activations in the backward to save memory "
                             f"(default: {'on' if checkpointing else 'off'})")
    parser.add_argument("--checkpoint-every", type=_args.positive_int, default=100, help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.safetensors (a run never overwrites one without it)")
    parser.add_argument("--seed", type=_args.seed, default=0,
                        help="seed of the run (initialisation, noise, data order)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: CUDA when available (the rank's GPU under accelerate launch)")
    parser.add_argument("--reference-attention", action="store_true",
                        help="run frame/temporal attention in the reference PyTorch formulation, not vidgen's kernels")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, and no loading bars or info logs from diffusers/transformers")


def check_training_arguments(args) -> None:
    """What ``tune`` and ``train-adapter`` check before loading anything, but their data and output
    (:func:`check_training_output`, checked last); raises :class:`UsageError`."""
    import torch

    _args.check_backend()
    if args.device is not None:
        _args.check_device(args.device)
    if args.model is not None:
        _args.check_model_folder("--model", args.model)
    on_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if args.mixed_precision == "fp16" and not on_cuda:
        raise UsageError("--mixed-precision: fp16 training needs a CUDA device; use bf16 or no on a CPU")


def check_training_output(args) -> None:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out} is a file; expected an output folder")
    if not args.resume and os.path.isfile(os.path.join(args.out, CHECKPOINT_NAME)):
        raise UsageError(f"--out: {args.out} holds the checkpoint of an earlier run; resume it (--resume) or "
                         "choose another output folder (nothing is overwritten)")


def settings_from_args(args):
    import torch

    from ..train import TrainSettings

    mixed = args.mixed_precision
    if mixed is None:
        on_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
        mixed = "fp16" if on_cuda else "no"
    return TrainSettings(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                         max_grad_norm=args.max_grad_norm, mixed_precision=mixed,
                         gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
                         resume=args.resume, seed=args.seed, device=args.device, progress=not args.quiet)


def report(result) -> None:
    """Rank 0 prints what was written; other ranks stay silent."""
    if not result.files:
        return
    losses = result.losses
    print(f"trained {len(losses)} steps (resumed at step {result.resumed_from}); "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    for kind, path in result.files.items():
        print(f"wrote {kind}: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = _args.parser("vidgen tune", __doc__)
    parser.add_argument("--model", help="a local diffusers SD 1.x/2.x folder (default: the built-in random-weight model)")
    parser.add_argument("--arch", choices=default_model.RANDOM_ARCHS, default="tiny",
                        help="the built-in random-weight model when --model is not given")
    parser.add_argument("--video", required=True, help="source video: .mp4/.gif or a folder of frames")
    parser.add_argument("--prompt", required=True, help="the source video's caption")
    parser.add_argument("--lamp", action="store_true",
                        help="LAMP: first-frame attention, frame 0 kept clean, loss on frames 1:")
    add_training_arguments(parser, steps=500, lr=3e-5, checkpointing=True)
    return parser


def check_arguments(args) -> None:
    check_training_arguments(args)
    if args.lamp and args.frames < 2:
        raise UsageError(f"--frames: LAMP trains on frames 1: and needs at least 2 frames, got {args.frames}")
    needed = (args.frames - 1) * args.stride + 1
    _args.read_video_for("--video", args.video, needed,
                         f"--frames {args.frames} at --stride {args.stride} need {needed}")
    check_training_output(args)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except UsageError as exc:
        return _args.fail(parser, exc)
    from ..train import tune

    try:
        with _args.quiet_libraries(args.quiet), _args.removing_new_empty_folders(args.out):
            settings = settings_from_args(args)
            model_dir = args.model or default_model.ensure(args.arch)
            result = tune(model_dir, args.video, args.prompt, args.out, frames=args.frames, height=args.height,
                          width=args.width, stride=args.stride, noise=args.noise, noise_alpha=args.noise_alpha,
                          lamp=args.lamp, prediction_type=args.prediction_type,
                          use_vidgen_ops=not args.reference_attention, settings=settings)
    except (OSError, ValueError) as exc:  # OSError: a model file missing or unreadable
        return _args.fail(parser, exc)
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
