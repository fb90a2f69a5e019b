"""PYoCo correlated noise in a training loop: diffusion training of a small video UNet.

``vidgen.ops.add_noise`` draws the noise correlated along frames ("progressive": each frame's
noise continues the previous frame's) and applies the forward diffusion in one pass; the
epsilon target is that correlated noise (METHODS.md section 3). The data is random latents, so
this runs on a CPU in seconds; swap in your own latents and UNet.

    python examples/pyoco_noise_training.py --steps 20 --kind progressive --alpha 2
"""
import argparse

import torch
from diffusers import DDIMScheduler

import vidgen
from vidgen import VideoUNet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kind", choices=("iid", "mixed", "progressive"), default="progressive")
    parser.add_argument("--alpha", type=float, default=2.0, help="PYoCo alpha (0: i.i.d. frames)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    unet = VideoUNet(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                     attention_head_dim=2, norm_num_groups=8)
    alphas_cumprod = DDIMScheduler(beta_schedule="scaled_linear").alphas_cumprod.float()
    latents = torch.randn(2, 4, 4, 4, 4)  # (B, C, F, h, w): two 4-frame videos
    text = torch.randn(2, 5, 16)          # stand-in text embeddings
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)

    for step in range(args.steps):
        timesteps = torch.randint(0, len(alphas_cumprod), (2,), generator=torch.Generator().manual_seed(step))
        # frame_dim=2: frames are dim 2 of (B, C, F, h, w); a new seed each step, a fresh draw.
        noisy, eps = vidgen.ops.add_noise(latents, timesteps, alphas_cumprod, kind=args.kind, alpha=args.alpha,
                                          frame_dim=2, seed=step)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, text).sample, eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (0, args.steps - 1):
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
