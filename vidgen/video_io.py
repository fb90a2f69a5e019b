"""Reading and writing videos: .mp4 (PyAV), .gif, or a folder of PNG frames, through imageio.

Frames are uint8 arrays (F, H, W, 3) on the way out of a reader and into a writer; helpers
convert to and from the float tensors (F, 3, H, W) in [-1, 1] that a VAE takes.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch

VIDEO_SUFFIXES = (".mp4", ".gif")


def read_video(path: str, *, max_frames: int | None = None) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 from an .mp4/.gif file or a folder of images (sorted by name)."""
    import imageio.v3 as iio

    if not os.path.exists(path):
        raise FileNotFoundError(f"video: {path} does not exist")
    try:
        if os.path.isdir(path):
            files = sorted(f for ext in ("png", "jpg", "jpeg") for f in glob.glob(os.path.join(path, f"*.{ext}")))
            if not files:
                raise ValueError(f"video: folder {path} holds no .png/.jpg frames")
            frames = np.stack([iio.imread(f) for f in files[:max_frames]])
        else:
            plugin = "pyav" if path.lower().endswith(".mp4") else None
            frames = iio.imread(path, plugin=plugin) if plugin else iio.imread(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"video: cannot read {path}: {exc}") from exc
    if frames.ndim == 3:  # grey frames
        frames = np.repeat(frames[..., None], 3, axis=-1)
    frames = frames[..., :3]  # drop alpha
    return frames[:max_frames] if max_frames else frames


def write_video(path: str, frames: np.ndarray, *, fps: int = 8) -> str:
    """Write (F, H, W, 3) uint8 frames to .mp4/.gif, or to a folder of PNGs for any other path."""
    import imageio.v3 as iio

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    lower = path.lower()
    if lower.endswith(".mp4"):
        # yuv420p needs even sides; pad by edge replication rather than resample
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=fps)
    elif lower.endswith(".gif"):
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        os.makedirs(path, exist_ok=True)
        for i, frame in enumerate(frames):
            iio.imwrite(os.path.join(path, f"{i:04d}.png"), frame)
    return path


def frames_to_tensor(frames: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, h, w) float32 in [-1, 1], resized (bilinear) and centre-cropped."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if size is not None:
        th, tw = size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        x = torch.nn.functional.interpolate(x, size=(max(th, round(h * scale)), max(tw, round(w * scale))),
                                            mode="bilinear", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    return x


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
