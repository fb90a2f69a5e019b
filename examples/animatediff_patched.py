"""AnimateDiff with vidgen: patch a diffusers pipeline, check the output, read what was replaced.

Runs on a CPU in seconds with the built-in random-weight model (its frames are coloured noise;
the point is the mechanics). For a real model, build the pipeline from your own folders:

    adapter = MotionAdapter.from_pretrained("path/to/motion-adapter")
    pipe = AnimateDiffPipeline.from_pretrained("path/to/sd15", motion_adapter=adapter)

    python examples/animatediff_patched.py --frames 4 --steps 2
"""
import argparse

import torch

import vidgen
from vidgen import default_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="pixels (a multiple of 8)")
    args = parser.parse_args(argv)

    # A Stable Diffusion folder (built on first use in $VIDGEN_CACHE) plus a random MotionAdapter.
    pipe = default_model.animatediff_pipeline(default_model.ensure("tiny"))
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe("a red horse runs in the sky", num_frames=args.frames, height=args.size, width=args.size,
                    num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                    output_type="latent").frames

    before = sample()
    vidgen.patch(pipe)  # motion modules and the DDIM step now run on vidgen's kernels
    print(vidgen.patch_report(pipe))
    after = sample()
    # On a CPU both run PyTorch (the kernels need CUDA): the difference is float rounding only.
    print(f"largest difference from diffusers: {(after - before).abs().max().item():.2e}")
    vidgen.unpatch(pipe)
    assert torch.equal(sample(), before), "unpatch restores diffusers' own computation exactly"


if __name__ == "__main__":
    main()
