"""``vidgen tune``: one-shot Tune-A-Video (or LAMP) tuning of an image model on one video.

The output folder loads with ``vidgen sample --model OUT`` (add ``--video`` there to start
from the DDIM inversion of the source video, as Tune-A-Video samples).
"""
from __future__ import annotations

import argparse
import sys

from .. import default_model

NOISE_KINDS = ("iid", "mixed", "progressive")


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int, lr: float, checkpointing: bool) -> None:
    """Options shared by ``vidgen tune`` and ``vidgen train-adapter``."""
    parser.add_argument("--out", required=True, help="output folder: checkpoint, loss.png and the trained model")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=None, help="pixels (default: the model's size)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--stride", type=int, default=1, help="take every stride-th frame")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--noise", choices=NOISE_KINDS, default="iid", help="training noise (PYoCo: mixed, progressive)")
    parser.add_argument("--noise-alpha", type=float, default=None, help="PYoCo alpha (default: 1 mixed, 2 progressive)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                        help="training target (default: the model's scheduler's)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                        help="autocast dtype (fp16 uses loss scaling); default: fp16 on CUDA, no on CPU")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=checkpointing)
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.safetensors (a run never overwrites one without it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: CUDA when available (the rank's GPU under accelerate launch)")
    parser.add_argument("--reference-attention", action="store_true",
                        help="run frame/temporal attention in the reference PyTorch formulation, not vidgen's kernels")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vidgen tune", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local diffusers SD 1.x/2.x folder (default: the built-in random-weight model)")
    parser.add_argument("--arch", choices=default_model.ARCHS, default="tiny",
                        help="architecture of the built-in model when --model is not given")
    parser.add_argument("--video", required=True, help="source video: .mp4/.gif or a folder of frames")
    parser.add_argument("--prompt", required=True, help="the source video's caption")
    parser.add_argument("--lamp", action="store_true",
                        help="LAMP: first-frame attention, frame 0 kept clean, loss on frames 1:")
    add_training_arguments(parser, steps=500, lr=3e-5, checkpointing=True)
    args = parser.parse_args(argv)
    from ..train import tune

    try:
        settings = settings_from_args(args)
        model_dir = args.model or default_model.ensure(args.arch)
        result = tune(model_dir, args.video, args.prompt, args.out, frames=args.frames, height=args.height,
                      width=args.width, stride=args.stride, noise=args.noise, noise_alpha=args.noise_alpha,
                      lamp=args.lamp, prediction_type=args.prediction_type,
                      use_vidgen_ops=not args.reference_attention, settings=settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vidgen tune: {exc}", file=sys.stderr)
        return 2
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
