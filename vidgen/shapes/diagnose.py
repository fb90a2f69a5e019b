"""Why a moving-shapes video model does or does not follow its direction word: four measurements.

``python -m vidgen.shapes.diagnose [--work reproduce_out] [UNET_FOLDER ...]`` prints them for the
prior of the work folder and for each saved video UNet (default: the built-in model's):

* **placement**: where the text-to-image prior puts a shape for each direction word. It is trained
  on opening frames, and a clip that moves left starts on the right, so a prior that reads the
  direction word places "moves left" shapes right of "moves right" ones (the data's opening
  frames: :func:`real_placement`).
* **text separation**: how far apart the text encoder puts two captions that differ in one word
  (a direction, a shape, a colour): the video models' only way to the direction word when the
  encoder is frozen.
* **caption and order sensitivity**: a video UNet's denoising loss on training clips with their
  own caption, with the direction word swapped for its opposite, and with the clip's frames in
  reverse order (the motion reversed, the caption kept). A model that uses the direction word
  and the frame order loses on both; one that ignores them scores the same.
* **frame coupling**: how much each frame's prediction changes when one other frame's noisy input
  is redrawn, against the change of that frame's own prediction. A model whose frames do not
  inform each other draws every frame as an independent image: its shapes jump from frame to
  frame, and no direction can be read from the track.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from . import data, experiments, scores

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _mean_position(frames: torch.Tensor) -> tuple[float, float, int]:
    found = [d for d in scores.detect(frames) if d.present]
    if not found:
        return float("nan"), float("nan"), 0
    return sum(d.x for d in found) / len(found), sum(d.y for d in found) / len(found), len(found)


def real_placement(per_direction: int = 48, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Mean (x, y) of the shape in the opening frames of real clips, per direction word."""
    out = {}
    for direction in data.DIRECTIONS:
        specs = data.sample_specs(per_direction, seed, directions=(direction,))
        x, y, _ = _mean_position(data.render(specs, frames=1)[:, 0])
        out[direction] = (x, y)
    return out


@torch.no_grad()
def prior_placement(prior_dir: str, per_direction: int = 12, steps: int = 20, guidance: float = 4.0,
                    seed: int = 0) -> dict[str, tuple[float, float]]:
    """Mean (x, y) of the shape in the prior's images of ``a <colour> <shape> moves <direction>``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(prior_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    combos = [(c, s) for c in data.COLOURS for s in data.SHAPES]
    out = {}
    for direction in data.DIRECTIONS:
        prompts = [str(data.Caption(c, s, direction)) for c, s in combos][:per_direction]
        images = pipe(prompts, height=data.SIZE, width=data.SIZE, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(seed), output_type="pt").images
        x, y, _ = _mean_position(images)
        out[direction] = (x, y)
    return out


@torch.no_grad()
def text_separation(model, base: data.Caption = data.Caption("red", "square", "left")) -> dict[str, float]:
    """Relative L2 distance of the text encoder's last hidden states (over all tokens) between
    ``base`` and the caption with its direction, shape or colour replaced (mean over replacements)."""
    from ..sampling import encode_prompt

    variants = {"direction": [data.Caption(base.colour, base.shape, d) for d in data.DIRECTIONS if d != base.direction],
                "shape": [data.Caption(base.colour, s, base.direction) for s in data.SHAPES if s != base.shape],
                "colour": [data.Caption(c, base.shape, base.direction) for c in data.COLOURS if c != base.colour]}
    reference = encode_prompt(model, [str(base)]).float()[0]
    out = {}
    for word, captions in variants.items():
        states = encode_prompt(model, [str(c) for c in captions]).float()
        out[word] = float(((states - reference).norm(dim=(1, 2)) / reference.norm()).mean())
    return out


@torch.no_grad()
def caption_sensitivity(model, latents: torch.Tensor, captions: list[data.Caption],
                        timesteps: tuple[int, ...] = (100, 400, 700, 900), chunk: int = 8) -> dict[int, dict[str, float]]:
    """Per timestep, the denoising loss of a :class:`~vidgen.sampling.VideoModel`'s UNet (against
    its scheduler's target: the noise or v) on clips ``latents (N, C, F, h, w)`` with their
    ``captions``, with the direction word swapped, and with the frames reversed (same noise draws
    for the three)."""
    from ..ops import add_noise
    from ..sampling import encode_prompt
    from ..train.tune import prediction_target

    unet = model.unet.eval()
    alphas_cumprod = model.scheduler.alphas_cumprod.float()
    prediction_type = model.scheduler.config.prediction_type
    own = encode_prompt(model, [str(c) for c in captions]).float()
    swapped = encode_prompt(model, [str(data.Caption(c.colour, c.shape, OPPOSITE[c.direction]))
                                    for c in captions]).float()

    def loss(noisy, target, text, t):
        total = sum(((unet(noisy[i:i + chunk], t[i:i + chunk], text[i:i + chunk]).sample - target[i:i + chunk]) ** 2).sum()
                    for i in range(0, len(noisy), chunk))
        return float(total / target.numel())

    out = {}
    for step in timesteps:
        t = torch.full((len(latents),), step)
        noisy, eps = add_noise(latents, t, alphas_cumprod, kind="iid", frame_dim=2, seed=step)
        target = prediction_target(prediction_type, eps, latents, alphas_cumprod[step])
        out[step] = {"own caption": loss(noisy, target, own, t), "direction swapped": loss(noisy, target, swapped, t),
                     "frames reversed": loss(noisy.flip(2), target.flip(2), own, t)}
    return out


@torch.no_grad()
def frame_coupling(unet, text: torch.Tensor, noisy_shape: tuple[int, ...], timesteps: tuple[int, ...] = (999, 700, 300),
                   frame: int = 4, seed: int = 0) -> dict[int, float]:
    """Per timestep: the RMS change of the other frames' predictions of ``unet(noisy, t, text)``
    when frame ``frame``'s noisy input (of shape ``(1, C, F, h, w)``) is redrawn, as a fraction of
    the change of frame ``frame``'s own prediction."""
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(noisy_shape, generator=generator)
    channels, size = noisy_shape[1], noisy_shape[-1]
    redrawn = noisy.clone()
    redrawn[:, :, frame] = torch.randn(1, channels, size, size, generator=generator)
    out = {}
    for step in timesteps:
        t = torch.tensor([step])
        change = (unet(redrawn, t, text).sample - unet(noisy, t, text).sample).square().mean(dim=(0, 1, 3, 4)).sqrt()
        others = torch.cat([change[:frame], change[frame + 1:]])
        out[step] = float(others.mean() / change[frame])
    return out


def main(argv=None) -> int:
    from safetensors.torch import load_file

    from .. import VideoUNet
    from ..default_model import SHAPES_DIR
    from ..sampling import VideoModel, encode_prompt, load_video_unet
    from .training import TextPerFrame

    parser = argparse.ArgumentParser(prog="python -m vidgen.shapes.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("unets", nargs="*", help="saved video UNet folders (default: the built-in model's)")
    parser.add_argument("--work", default="reproduce_out", help="the work folder of make reproduce (its prior and clips)")
    parser.add_argument("--clips", type=int, default=48, help="training clips for the loss comparison")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prior = os.path.join(args.work, "prior")
    print("opening frames, mean (x, y) of the shape per direction word (32x32 pixels):")
    real, made = real_placement(), prior_placement(prior)
    for direction in data.DIRECTIONS:
        print(f"  {direction:>5}: real ({real[direction][0]:4.1f}, {real[direction][1]:4.1f}), "
              f"prior ({made[direction][0]:4.1f}, {made[direction][1]:4.1f})")
    separation = text_separation(VideoModel.from_pretrained(prior))
    print("text encoder: relative change of 'a red square moves left' when one word changes: "
          + ", ".join(f"{word} {100 * value:.1f} %" for word, value in separation.items()))
    latents = load_file(os.path.join(args.work, "clip_latents.safetensors"))["latents"]
    rows = torch.linspace(0, len(latents) - 1, args.clips).long()
    specs = experiments.training_specs(experiments.FULL)
    captions = [specs[i].caption for i in rows]
    for folder in args.unets or [os.path.join(SHAPES_DIR, "unet")]:
        model = VideoModel.from_pretrained(prior, unet=load_video_unet(folder))
        config = model.unet.eval().config
        if not isinstance(model.unet, VideoUNet):  # a motion UNet takes its text per frame
            model = dataclasses.replace(model, unet=TextPerFrame(model.unet))
        print(f"{folder}:")
        for step, losses in caption_sensitivity(model, latents[rows], captions).items():
            own = losses["own caption"]
            print(f"  t={step:3d}: loss {own:.5f}; direction swapped {100 * (losses['direction swapped'] / own - 1):+.2f} %, "
                  f"frames reversed {100 * (losses['frames reversed'] / own - 1):+.2f} %")
        coupling = frame_coupling(model.unet, encode_prompt(model, ["a red square moves left"]).float(),
                                  (1, config.in_channels, data.FRAMES, config.sample_size, config.sample_size))
        print("  frame coupling (other frames' change / the redrawn frame's): "
              + ", ".join(f"t={step} {value:.3f}" for step, value in coupling.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
