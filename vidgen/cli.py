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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.splitlines()[0] + "\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<14} {help_}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nvidgen: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
