"""``vidgen eval``: CLIP metrics of videos, or ``--parity``: the same sample with and without vidgen.

* ``vidgen eval --clip DIR VIDEO... [--prompt P]``: CLIP text alignment, frame consistency and
  diversity of the given videos.
* ``vidgen eval --parity [--model DIR] [--clip DIR]``: sample one prompt and seed with diffusers'
  default modules and with vidgen for each supported model kind; per-frame PSNR, max abs
  difference, both timings and (with ``--clip``) both videos' CLIP metrics.
"""
from __future__ import annotations

import csv
import json
import os

from .. import eval as metrics
from ..video_io import read_video
from . import _args
from ._args import UsageError

PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")


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

    from .. import _timing, default_model
    from ..parity import format_table, parity_report

    model_dir = args.model or default_model.ensure(args.arch)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device or "cpu")
    rows = parity_report(model_dir, kinds=args.kinds, prompt=args.prompt or "a red horse runs in the sky",
                         seed=args.seed, frames=args.frames, steps=args.steps, device=device,
                         dtype=dtype, clip_dir=args.clip, rounds=args.rounds)
    print(format_table(rows))
    if device.type == "cpu":
        print(_timing.CPU_CAVEAT)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parity.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")
    return 0


def build_parser():
    from .. import default_model
    from ..parity import KINDS

    parser = _args.parser("vidgen eval", __doc__)
    parser.add_argument("videos", nargs="*", metavar="VIDEO",
                        help=".mp4/.gif files or folders of frames to score (default: none; --parity samples its own)")
    parser.add_argument("--clip", help="local CLIP model folder (CLIPModel + CLIPProcessor); "
                                       "--parity: also score both videos (default: no CLIP metrics)")
    parser.add_argument("--parity", action="store_true", help="compare diffusers' default modules with vidgen")
    parser.add_argument("--model", help="--parity: a local SD-layout diffusers folder (default: the built-in model)")
    parser.add_argument("--arch", default="tiny", choices=default_model.RANDOM_ARCHS,
                        help="--parity: the built-in random-weight model's architecture")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="--parity: the model kinds (default: all)")
    parser.add_argument("--frames", type=_args.positive_int, default=8, help="--parity: video length")
    parser.add_argument("--steps", type=_args.positive_int, default=10, help="--parity: DDIM steps")
    parser.add_argument("--seed", type=_args.seed, default=0, help="--parity: sampling seed")
    parser.add_argument("--rounds", type=_args.positive_int, default=3,
                        help="--parity: timed rounds per side, in alternating order, after one warm-up run of each")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="--parity: model dtype")
    parser.add_argument("--prompt", help="the prompt the videos were sampled for (enables text alignment; "
                                         "default: none, or a fixed prompt with --parity)")
    parser.add_argument("--out", default="eval_out", help="folder for clip_scores.{json,csv} and the plot "
                                                          "(--parity: parity.json)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available; "
                                                       "--parity: cpu)")
    parser.add_argument("--batch-size", type=_args.positive_int, default=32, help="frames per CLIP forward")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or loading messages from vidgen, diffusers or transformers")
    return parser


def check_clip_folder(path: str) -> None:
    what = "a local CLIP model folder (CLIPModel.save_pretrained plus its CLIPProcessor; vidgen downloads nothing)"
    config = _args.check_config_folder("--clip", path, what)
    if config.get("model_type") != "clip":
        raise UsageError(f"--clip: {path} holds a {config.get('model_type') or 'non-transformers'} model, "
                         f"not a CLIP model; expected {what}")
    # transformers writes the processor's settings to one of these names, depending on its version
    if not any(os.path.isfile(os.path.join(path, name)) for name in PROCESSOR_CONFIGS):
        raise UsageError(f"--clip: {path} has no CLIP processor ({' or '.join(PROCESSOR_CONFIGS)}); "
                         f"expected {what}")


def check_arguments(args) -> None:
    if args.device is not None:
        _args.check_device(args.device)
    if os.path.isfile(args.out):
        raise UsageError(f"--out: {args.out} is a file; expected an output folder")
    if args.clip is not None:
        check_clip_folder(args.clip)
    if args.parity:
        _args.check_backend()
        if args.videos:
            raise UsageError(f"VIDEO: --parity samples its own videos; got {', '.join(args.videos)}")
        if args.model is not None:
            _args.check_model_folder("--model", args.model)
        return
    if not args.videos or not args.clip:
        raise UsageError("give --clip DIR and at least one VIDEO (or --parity)")
    for path in args.videos:
        _args.check_exists("VIDEO", path)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except UsageError as exc:
        return _args.fail(parser, exc)
    with _args.quiet_libraries(args.quiet):
        return _run(parser, args)


def _run(parser, args) -> int:
    if args.parity:
        return _parity(args)
    try:
        videos = {}
        for path in args.videos:
            try:
                videos[path] = read_video(path)
            except (FileNotFoundError, ValueError) as exc:
                raise UsageError(f"VIDEO: {str(exc).removeprefix('video: ')}") from None
        try:
            report = metrics.clip_scores(videos, args.clip, args.prompt, device=args.device,
                                         batch_size=args.batch_size)
        except OSError as exc:  # transformers' loaders: a file of the folder is missing or unreadable
            raise UsageError(f"--clip: cannot load a CLIP model from {args.clip}: {exc}") from None
    except (UsageError, FileNotFoundError, ValueError) as exc:
        return _args.fail(parser, exc)
    print(f"{'video':<40} {'alignment':>10} {'consistency':>12}")
    for v in report["videos"]:
        print(f"{v['path'][-40:]:<40} {_fmt(v['text_alignment']):>10} {_fmt(v['frame_consistency']):>12}")
    print(f"{'mean':<40} {_fmt(report['text_alignment']):>10} {_fmt(report['frame_consistency']):>12}")
    print(f"diversity (mean pairwise similarity, lower is more diverse): {_fmt(report['diversity'])}")
    print("wrote " + ", ".join(_write_report(report, args.out)))
    return 0
