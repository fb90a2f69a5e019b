"""CLIP metrics of generated videos, as the seed poster and the Tune-A-Video paper report them.

* text alignment: mean cosine similarity of each frame's image embedding with the prompt's
  text embedding, x100;
* frame consistency: mean cosine similarity of consecutive frames' embeddings, x100;
* diversity: mean pairwise cosine similarity of the videos sampled for one prompt (each video
  embedded as the normalised mean of its frames), x100; lower is more diverse.

The CLIP model comes from a local folder (transformers ``CLIPModel`` + processor); nothing is
downloaded.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class VideoScores:
    path: str
    text_alignment: float | None  # None when no prompt was given
    frame_consistency: float | None  # None for a one-frame video
    per_frame_alignment: list[float] = field(default_factory=list)
    per_pair_consistency: list[float] = field(default_factory=list)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def video_scores(frame_embeddings: torch.Tensor, text_embedding: torch.Tensor | None, path: str = "") -> VideoScores:
    """Scores of one video from its (F, E) frame embeddings and an optional (E,) text embedding."""
    frames = _unit(frame_embeddings.double())
    per_frame = (frames @ _unit(text_embedding.double())).mul(100).tolist() if text_embedding is not None else []
    per_pair = (frames[1:] * frames[:-1]).sum(-1).mul(100).tolist()
    return VideoScores(path, float(np.mean(per_frame)) if per_frame else None,
                       float(np.mean(per_pair)) if per_pair else None, per_frame, per_pair)


def diversity(video_embeddings: list[torch.Tensor]) -> float | None:
    """Mean pairwise similarity (x100) of videos, each given as its (F, E) frame embeddings."""
    if len(video_embeddings) < 2:
        return None
    means = [_unit(_unit(v.double()).mean(0)) for v in video_embeddings]
    return float(np.mean([(a @ b).item() * 100 for a, b in itertools.combinations(means, 2)]))


class ClipScorer:
    """Embeds frames and prompts with a local CLIP model folder, in batches, on the given device."""

    def __init__(self, clip_dir: str, device: str | torch.device | None = None, batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        if not clip_dir or not os.path.isdir(clip_dir):
            raise FileNotFoundError(
                f"--clip: {clip_dir!r} is not a folder. Pass a local CLIP model folder (as written by "
                "transformers' CLIPModel.save_pretrained plus its CLIPProcessor); vidgen downloads nothing.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = CLIPModel.from_pretrained(clip_dir).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(clip_dir)
        self.batch_size = batch_size

    @staticmethod
    def _features(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (F, E) image embeddings."""
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            pixels = self.processor(images=list(frames[start:start + self.batch_size]), return_tensors="pt")
            chunks.append(self._features(self.model.get_image_features(
                pixel_values=pixels["pixel_values"].to(self.device))).float().cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_text(self, prompt: str) -> torch.Tensor:
        tokens = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self._features(self.model.get_text_features(**tokens)).float().cpu()[0]


def clip_scores(videos: dict[str, np.ndarray], clip_dir: str, prompt: str | None = None, *,
                device=None, batch_size: int = 32) -> dict:
    """Scores of each video (``{name: (F, H, W, 3) uint8}``) and their means and diversity."""
    scorer = ClipScorer(clip_dir, device, batch_size)
    text = scorer.embed_text(prompt) if prompt else None
    embeddings = {name: scorer.embed_frames(frames) for name, frames in videos.items()}
    per_video = [video_scores(emb, text, name) for name, emb in embeddings.items()]

    def mean(key):
        values = [getattr(v, key) for v in per_video if getattr(v, key) is not None]
        return float(np.mean(values)) if values else None

    return {"prompt": prompt, "text_alignment": mean("text_alignment"),
            "frame_consistency": mean("frame_consistency"), "diversity": diversity(list(embeddings.values())),
            "videos": [asdict(v) for v in per_video]}


def plot_per_frame(report: dict, path: str) -> str:
    """Per-frame text alignment and per-pair consistency of every video, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_c) = plt.subplots(1, 2, figsize=(10, 3.5))
    for video in report["videos"]:
        label = os.path.basename(video["path"]) or video["path"]
        if video["per_frame_alignment"]:
            ax_a.plot(video["per_frame_alignment"], marker="o", label=label)
        ax_c.plot(range(1, len(video["per_pair_consistency"]) + 1), video["per_pair_consistency"], marker="o",
                  label=label)
    ax_a.set(title="text alignment per frame", xlabel="frame", ylabel="CLIP cosine x100")
    ax_c.set(title="consistency with previous frame", xlabel="frame", ylabel="CLIP cosine x100")
    ax_c.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
