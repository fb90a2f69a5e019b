"""Training data: video clips (a video file or a folder of frames), resized and centre-cropped to
the model's size, encoded with the model's VAE once, and the latents cached on disk.

A dataset folder for ``vidgen train-adapter`` holds videos (``.mp4``/``.gif`` files, or
subfolders of ``.png``/``.jpg`` frames), each with a caption: a sidecar text file of the same
stem (``walk.mp4`` + ``walk.txt``, ``walk/`` + ``walk.txt``), or an entry in a captions file
(JSON ``{"walk.mp4": "a man walking", ...}``, keys are the video's name or stem).

The cache key is the clip's identity (path, size, modification time), the clip settings and the
VAE's weights file identity, so a changed video or model is re-encoded and nothing else is.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from ..sampling import VideoModel, encode_prompt, encode_video
from ..video_io import VIDEO_SUFFIXES, frames_to_tensor, read_video
from .checkpoint import atomic_save

_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_ENCODE_CHUNK = 4  # frames per VAE encoder call


@dataclass(frozen=True)
class ClipSpec:
    """Which frames of a video, at which pixel size: ``frames`` frames, every ``stride``-th from ``start``."""

    frames: int
    height: int
    width: int
    stride: int = 1
    start: int = 0

    def __post_init__(self):
        for name in ("frames", "height", "width", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.start < 0:
            raise ValueError(f"start: expected >= 0, got {self.start}")


def model_pixel_size(model: VideoModel) -> tuple[int, int]:
    """The pixel size the UNet was built for: its latent ``sample_size`` times the VAE's factor."""
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    side = model.unet.config.sample_size * factor
    return side, side


def load_clip(path: str, spec: ClipSpec) -> torch.Tensor:
    """Frames ``(F, 3, H, W)`` in [-1, 1] of a video file or frame folder, resized and centre-cropped."""
    needed = spec.start + (spec.frames - 1) * spec.stride + 1
    video = read_video(path, max_frames=needed)
    if len(video) < needed:
        raise ValueError(f"video: {path} has {len(video)} frames; {spec.frames} frames at stride {spec.stride} "
                         f"from frame {spec.start} need {needed}")
    return frames_to_tensor(video[spec.start:needed:spec.stride], size=(spec.height, spec.width))


def _file_identity(path: str) -> list:
    """(path, size, mtime) of a file, or of every frame file of a folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return [_file_identity(os.path.join(path, name)) for name in sorted(os.listdir(path))
                if name.lower().endswith(_FRAME_SUFFIXES)]
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


def _vae_identity(model_dir: str) -> list:
    folder = os.path.join(model_dir, "vae")
    return [_file_identity(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name.startswith("diffusion_pytorch_model")]


def clip_latents(model: VideoModel, model_dir: str, path: str, spec: ClipSpec, cache_dir: str | None) -> torch.Tensor:
    """VAE latents ``(C, F, h, w)`` (fp32, CPU, contiguous) of one clip, from the cache when it has them."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"video: {path} does not exist")
    key = hashlib.sha256(json.dumps([_file_identity(path), vars(spec), _vae_identity(model_dir),
                                     str(model.vae.dtype)]).encode()).hexdigest()[:32]
    cached = os.path.join(cache_dir, f"{key}.safetensors") if cache_dir else None
    if cached and os.path.isfile(cached):
        return load_file(cached)["latents"]
    frames = load_clip(path, spec)
    # A few frames per VAE call: the encoder's full-resolution activations dominate its memory.
    latents = torch.cat([encode_video(model, chunk[None])[0].float().cpu() for chunk in frames.split(_ENCODE_CHUNK)],
                        dim=1).contiguous()
    if cached:
        atomic_save({"latents": latents}, cached, {"source": os.path.abspath(path)})
    return latents


# ----------------------------------------------------------------------------------------------
# A folder of captioned videos
# ----------------------------------------------------------------------------------------------
@dataclass
class CaptionedVideo:
    path: str
    caption: str


def find_videos(folder: str, captions_file: str | None = None) -> list[CaptionedVideo]:
    """The captioned videos of a dataset folder (see the module docstring), sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data: {folder} is not a folder")
    captions: dict[str, str] = {}
    if captions_file:
        with open(captions_file) as f:
            captions = json.load(f)
        if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
            raise ValueError(f"captions: {captions_file} must hold a JSON object of video name -> caption")
    videos = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        stem, suffix = os.path.splitext(name)
        is_frames = os.path.isdir(path) and any(f.lower().endswith(_FRAME_SUFFIXES) for f in os.listdir(path))
        if not (is_frames or (os.path.isfile(path) and suffix.lower() in VIDEO_SUFFIXES)):
            continue
        if is_frames:
            stem = name
        caption = captions.get(name, captions.get(stem))
        sidecar = os.path.join(folder, stem + ".txt")
        if caption is None and os.path.isfile(sidecar):
            with open(sidecar) as f:
                caption = f.read().strip()
        if caption is None:
            raise ValueError(f"data: {path} has no caption (expected {sidecar} or an entry in --captions)")
        videos.append(CaptionedVideo(path, caption))
    if not videos:
        raise ValueError(f"data: {folder} holds no videos (.mp4/.gif files or folders of .png/.jpg frames)")
    return videos


@dataclass
class LatentDataset:
    """Encoded training data, all on one device: ``latents (N, C, F, h, w)`` and, per video, the
    index of its caption in ``embeddings (K, L, C_text)`` (unique captions encoded once); the
    last row of ``embeddings`` is the empty prompt (for caption dropout / unconditional training)."""

    latents: torch.Tensor
    caption_index: torch.Tensor
    embeddings: torch.Tensor

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device) -> "LatentDataset":
        return LatentDataset(self.latents.to(device), self.caption_index.to(device), self.embeddings.to(device))


def encode_dataset(model: VideoModel, model_dir: str, videos: list[CaptionedVideo], spec: ClipSpec,
                   cache_dir: str | None) -> LatentDataset:
    """Encode every clip (through the cache) and every distinct caption once."""
    latents = torch.stack([clip_latents(model, model_dir, v.path, spec, cache_dir) for v in videos])
    distinct = list(dict.fromkeys(v.caption for v in videos))
    embeddings = encode_prompt(model, distinct + [""]).float().cpu()
    index = torch.tensor([distinct.index(v.caption) for v in videos], dtype=torch.int64)
    return LatentDataset(latents, index, embeddings)


def batch_indices(count: int, batch: int, step: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """The dataset rows of step ``step`` on rank ``rank``: a fresh permutation each epoch, the global
    batch of a step split across ranks. A pure function of its arguments, so a resumed run visits
    exactly the data the uninterrupted one would have."""
    first = (step * world + rank) * batch
    rows = []
    for position in range(first, first + batch):
        epoch, offset = divmod(position, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
        rows.append(int(order[offset]))
    return torch.tensor(rows, dtype=torch.int64)
