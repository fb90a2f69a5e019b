"""``vidgen eval``: CLIP metrics of videos, or ``--parity``: the same sample with and without vidgen.

* ``vidgen eval --clip DIR VIDEO... [--prompt P]``: CLIP text alignment, frame consistency and
  diversity of the given videos.
* ``vidgen eval --parity [--model DIR] [--clip DIR]``: sample one prompt and seed with diffusers'
  default modules and with vidgen for each supported model kind; per-frame PSNR, max abs
  difference, both timings and (with ``--clip``) both videos' CLIP metrics.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from .. import eval as metrics
from ..video_io import read_video


def _write_report(report: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, csv_path = os.path.join(out_dir, "clip_scores.json"), os.path.join(out_dir, "clip_scores.csv")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "text_alignment", "frame_consistency"])
        for v in report["videos"]:
            writer.writerow([v["path"], v["text_alignment"], v["frame_consistency"]])
        writer.writerow(["mean", report["text_alignment"], report["frame_consistency"]])
        writer.writerow(["diversity", report["diversity"], ""])
    return [json_path, csv_path, metrics.plot_per_frame(report, os.path.join(out_dir, "clip_per_frame.png"))]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _parity(args) -> int:
    import torch

    from .. import default_model
    from ..parity import format_table, parity_report

    model_dir = args.model or default_model.ensure(args.arch)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    rows = parity_report(model_dir, kinds=args.kinds, prompt=args.prompt or "a red horse runs in the sky",
                         seed=args.seed, frames=args.frames, steps=args.steps, device=args.device or "cpu",
                         dtype=dtype, clip_dir=args.clip)
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parity.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    from ..parity import KINDS

    parser = argparse.ArgumentParser(prog="vidgen eval", description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", help=".mp4/.gif files or folders of frames")
    parser.add_argument("--clip", help="local CLIP model folder (CLIPModel + CLIPProcessor)")
    parser.add_argument("--parity", action="store_true", help="compare diffusers' default modules with vidgen")
    parser.add_argument("--model", help="--parity: a local SD-layout diffusers folder (default: the built-in model)")
    parser.add_argument("--arch", default="tiny", help="--parity: the built-in model's architecture (tiny, sd15)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--prompt", help="the prompt the videos were sampled for (enables text alignment)")
    parser.add_argument("--out", default="eval_out", help="folder for clip_scores.{json,csv} and the plot")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.parity:
        return _parity(args)
    if not args.videos or not args.clip:
        parser.error("give --clip DIR and at least one video (or --parity)")
    try:
        videos = {path: read_video(path) for path in args.videos}
        report = metrics.clip_scores(videos, args.clip, args.prompt, device=args.device, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vidgen eval: {exc}", file=sys.stderr)
        return 2
    print(f"{'video':<40} {'alignment':>10} {'consistency':>12}")
    for v in report["videos"]:
        print(f"{v['path'][-40:]:<40} {_fmt(v['text_alignment']):>10} {_fmt(v['frame_consistency']):>12}")
    print(f"{'mean':<40} {_fmt(report['text_alignment']):>10} {_fmt(report['frame_consistency']):>12}")
    print(f"diversity (mean pairwise similarity, lower is more diverse): {_fmt(report['diversity'])}")
    print("wrote " + ", ".join(_write_report(report, args.out)))
    return 0
