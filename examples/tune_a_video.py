"""Tune-A-Video: one-shot tuning of an inflated image UNet on one video, then sampling from it.

The source video is drawn in code (a square moving right) and the built-in random-weight model
stands in for Stable Diffusion, so this runs on a CPU in seconds. With a real model, pass its
folder to ``tune`` and Tune-A-Video's recipe (500 steps, lr 3e-5) is the default.

    python examples/tune_a_video.py --steps 4 --out tuned
"""
import argparse
import os
import tempfile

import numpy as np

from vidgen import default_model
from vidgen.sampling import VideoModel, sample_video
from vidgen.train import tune
from vidgen.video_io import frames_to_tensor, read_video, write_video

SIZE = 32  # pixels: 4x4 latents with the built-in model's 8x VAE


def moving_square(frames: int) -> np.ndarray:
    """(F, SIZE, SIZE, 3) uint8: a red square moving right over a grey background."""
    video = np.full((frames, SIZE, SIZE, 3), 90, np.uint8)
    for f in range(frames):
        video[f, 10:22, 2 + 4 * f:14 + 4 * f] = (220, 40, 40)
    return video


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="tuning steps")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="vidgen-tune-")

    model_dir = default_model.ensure("tiny")
    source = write_video(os.path.join(out, "source.gif"), moving_square(args.frames))
    result = tune(model_dir, source, "a red square moving right", os.path.join(out, "model"), frames=args.frames,
                  height=SIZE, width=SIZE, steps=args.steps, lr=1e-3, checkpoint_every=args.steps, progress=False,
                  device="cpu")
    print(f"tuned {args.steps} steps: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}")

    # Sample as Tune-A-Video does: DDIM-invert the source video, then denoise with an edited prompt.
    model = VideoModel.from_pretrained(model_dir, unet=result.model)
    frames = frames_to_tensor(read_video(source), size=(SIZE, SIZE))[None]  # (1, F, 3, H, W) in [-1, 1]
    video = sample_video(model, "a blue square moving right", num_frames=args.frames, height=SIZE, width=SIZE,
                         num_inference_steps=4, source_video=frames, progress=False).video
    pixels = (video[0].permute(0, 2, 3, 1) * 255).round().byte().numpy()
    print(f"wrote {write_video(os.path.join(out, 'edited.gif'), pixels)}")


if __name__ == "__main__":
    main()
