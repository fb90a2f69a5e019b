"""Video Adapter: sample with a small video model guided by a large prior's score.

Each DDIM step composes eps_small(x | text) + lambda * eps_prior(x | text) with classifier-free
guidance on the small model, in one fused kernel (METHODS.md section 4). Here the small model
is a fresh, untrained VideoUNet and the prior is the built-in random-weight model, so this runs
on a CPU; ``vidgen train-adapter`` trains a real small model against a real prior.

    python examples/video_adapter_prior.py --strength 0.1
"""
import argparse

import torch

from vidgen import default_model
from vidgen.sampling import VideoModel, sample_video
from vidgen.train import AdapterConfig
from vidgen.train.adapter import build_small_unet

SIZE = 32  # pixels


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strength", type=float, default=0.1, help="the prior's weight lambda")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    model_dir = default_model.ensure("tiny")
    prior = VideoModel.from_pretrained(model_dir)  # the large model: its UNet inflated to video
    # The small model shares the prior's VAE, text encoder and scheduler: only its UNet differs.
    small_unet = build_small_unet(model_dir, AdapterConfig(channels=(16, 32), heads=2, norm_groups=8),
                                  latent_size=SIZE // 8, seed=0)
    small = VideoModel.from_pretrained(model_dir, unet=small_unet)

    def sample(strength: float) -> torch.Tensor:
        return sample_video(small, "a red horse runs in the sky", num_frames=3, height=SIZE, width=SIZE,
                            num_inference_steps=args.steps, guidance_scale=2.5, prior=prior.unet,
                            prior_strength=strength, decode=False, progress=False).latents

    alone, guided = sample(0.0), sample(args.strength)
    print(f"prior strength {args.strength}: the latents move by {(guided - alone).abs().mean().item():.4f} "
          "on average (strength 0 is the small model alone)")


if __name__ == "__main__":
    main()
