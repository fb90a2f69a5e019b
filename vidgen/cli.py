"""The ``vidgen`` command: ``vidgen <command> [options]``; ``vidgen <command> --help`` for each."""
from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv), one-line help)
COMMANDS = {
    "info": ("vidgen.info", "versions, GPU, CUDA library state, backend per op"),
    "demo": ("vidgen.demo", "the main job: sample with the built-in model, then time every op"),
    "sample": ("vidgen.commands.sample", "text-to-video (Tune-A-Video/LAMP, AnimateDiff, Video Adapter)"),
    "invert": ("vidgen.commands.invert", "DDIM inversion of a video to its starting latents"),
    "tune": ("vidgen.commands.tune", "one-shot Tune-A-Video / LAMP tuning on one video"),
    "train-adapter": ("vidgen.commands.train_adapter", "train a small Video Adapter model on captioned videos"),
    "bench": ("vidgen.commands.bench", "GPU kernel benchmarks against their peers (source checkout)"),
    "eval": ("vidgen.commands.eval", "CLIP text alignment, frame consistency and diversity of videos"),
}


def usage() -> str:
    lines = ["usage: vidgen <command> [options]   (vidgen <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "options:", f"  {'-h, --help':<14} show this help and exit",
              f"  {'--version':<14} print vidgen's version and exit"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"vidgen {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        what = "option" if argv[0].startswith("-") else "command"
        print(f"\nvidgen: unknown {what} {argv[0]!r}", file=sys.stderr)
        return 2
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
