"""Scores of moving-shapes videos, read back from the pixels and compared with the captions.

:func:`detect` finds the one shape of each frame: its colour is the palette colour nearest the
chromaticity of the brightest pixels; its coverage is every pixel's projection on that colour;
the area and centroid of the coverage size one template of every shape class
(:func:`vidgen.shapes.data.coverage`), and the class whose template fits the coverage best is
the shape. On a clip of the generator this recovers the ground truth (positions to about a
tenth of a pixel, sizes to a quarter); on a generated clip it is what a viewer would read.

Per video (:func:`video_report`): the caption's colour, shape and direction read back (the
direction from the least-squares velocity of the track), and the temporal consistency of the
track: every frame holds a shape of the video's colour, class and size (within 20 %), and its
steps are even (``jitter``: the spread of step lengths; a constant-velocity track has none, a
bounce between two frames shortens one step a little). :func:`frechet_distance` compares two sets
of clips on per-clip features of their tracks (colour, size, start, velocity, jitter, size
spread, detected frames), each in a fixed unit (:data:`FEATURE_UNITS`). :func:`pixel_clip_scores` applies ``vidgen eval``'s frame consistency and diversity
with flattened frames standing in for CLIP embeddings (this model has no image tower, so CLIP's
text alignment does not apply; the caption accuracy replaces it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import data

_PALETTE = torch.tensor([data.COLOURS[c] for c in data.COLOURS])          # (K, 3)
_CHROMA = _PALETTE / _PALETTE.amax(dim=1, keepdim=True)
PRESENCE = 0.25   # a frame whose brightest channel stays below this holds no shape
STILL = 0.25      # pixels per frame: slower tracks have no direction
SIZE_TOLERANCE = 0.2
TEMPLATE_SUPERSAMPLE = 4  # coverage points per pixel and axis of the fitted templates


@dataclass
class Detection:
    """One frame's shape, or ``present=False``; sizes and positions in pixels (box centre)."""

    present: bool
    colour: str | None = None
    shape: str | None = None
    x: float = math.nan
    y: float = math.nan
    size: float = math.nan
    rgb: tuple[float, float, float] = (math.nan,) * 3
    fit_error: float = math.nan  # L1 distance of coverage and the best template, per unit of area


def _fit_templates(alpha: torch.Tensor, area: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor):
    """For every shape class, the template sized and placed from area and centroid, and its L1
    distance to the coverage ``alpha (N, H, W)``. Returns (errors (N, S), sizes (N, S), box y (N, S))."""
    errors, sizes, box_y = [], [], []
    for shape in data.SHAPES:
        if shape == "square":
            size = area.sqrt()
            y = cy
        elif shape == "circle":
            size = 2 * (area / math.pi).sqrt()
            y = cy
        else:  # centroid of an apex-up triangle: a sixth of its height below its box centre
            size = (2 * area).sqrt()
            y = cy - size / 6
        template = data.coverage(shape, torch.stack([cx, y], 1), size, alpha.shape[-1], TEMPLATE_SUPERSAMPLE)
        errors.append((template - alpha).abs().sum(dim=(1, 2)) / area.clamp_min(1e-6))
        sizes.append(size)
        box_y.append(y)
    return torch.stack(errors, 1), torch.stack(sizes, 1), torch.stack(box_y, 1)


@torch.no_grad()
def detect(frames: torch.Tensor) -> list[Detection]:
    """The shape in each of ``frames (N, 3, H, W)`` in [0, 1] (one :class:`Detection` per frame)."""
    frames = frames.detach().float().cpu().clamp(0, 1)
    count, _, height, width = frames.shape
    brightness = frames.amax(dim=1)                                     # (N, H, W)
    peak = brightness.flatten(1).amax(dim=1)
    core = brightness >= 0.5 * peak.view(-1, 1, 1)                      # the brightest half: fully covered pixels
    core_rgb = (frames * core[:, None]).sum(dim=(2, 3)) / core.sum(dim=(1, 2)).clamp_min(1)[:, None]
    chroma = core_rgb / core_rgb.amax(dim=1, keepdim=True).clamp_min(1e-6)
    colour_index = torch.cdist(chroma, _CHROMA).argmin(dim=1)
    palette = _PALETTE[colour_index]                                    # (N, 3)
    alpha = (frames * palette.view(count, 3, 1, 1)).sum(1) / (palette ** 2).sum(1).view(count, 1, 1)
    alpha = alpha.clamp(0, 1)
    area = alpha.sum(dim=(1, 2))
    present = (peak >= PRESENCE) & (area >= 2.0)
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    safe_area = area.clamp_min(1e-6)
    cx = (alpha.sum(dim=1) * xs).sum(1) / safe_area
    cy = (alpha.sum(dim=2) * ys).sum(1) / safe_area
    errors, sizes, box_y = _fit_templates(alpha, safe_area, cx, cy)
    best = errors.argmin(dim=1)
    detections = []
    for i in range(count):
        if not present[i]:
            detections.append(Detection(False))
            continue
        b = int(best[i])
        detections.append(Detection(True, list(data.COLOURS)[int(colour_index[i])], data.SHAPES[b], float(cx[i]),
                                    float(box_y[i, b]), float(sizes[i, b]), tuple(core_rgb[i].tolist()),
                                    float(errors[i, b])))
    return detections


# ----------------------------------------------------------------------------------------------
# Per video
# ----------------------------------------------------------------------------------------------
def _majority(values: list[str | None]) -> str | None:
    values = [v for v in values if v is not None]
    return max(dict.fromkeys(values), key=values.count) if values else None


@dataclass
class VideoReport:
    colour: str | None
    shape: str | None
    direction: str | None
    velocity: tuple[float, float]   # pixels per frame (least squares over the detected frames)
    detected: float                 # fraction of frames holding a shape
    consistency: float              # fraction of frames with a shape of the video's colour, class and size
    jitter: float                   # standard deviation of the step lengths, pixels
    size: float                     # median size, pixels
    size_spread: float              # standard deviation / median of the size
    start: tuple[float, float]
    rgb: tuple[float, float, float]


def direction_of(velocity: tuple[float, float]) -> str | None:
    vx, vy = velocity
    if max(abs(vx), abs(vy)) < STILL or math.isnan(vx):
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def video_report(detections: list[Detection]) -> VideoReport:
    """Colour, shape, direction and temporal consistency of one video from its frames' detections."""
    seen = [(f, d) for f, d in enumerate(detections) if d.present]
    frames = len(detections)
    if not seen:
        nan2 = (math.nan, math.nan)
        return VideoReport(None, None, None, nan2, 0.0, 0.0, math.nan, math.nan, math.nan, nan2, (math.nan,) * 3)
    colour, shape = _majority([d.colour for _, d in seen]), _majority([d.shape for _, d in seen])
    t = torch.tensor([f for f, _ in seen], dtype=torch.float64)
    xy = torch.tensor([(d.x, d.y) for _, d in seen], dtype=torch.float64)
    sizes = torch.tensor([d.size for _, d in seen], dtype=torch.float64)
    if len(seen) >= 2:
        tc = t - t.mean()
        velocity = tuple(((tc[:, None] * (xy - xy.mean(0))).sum(0) / (tc ** 2).sum()).tolist())
    else:
        velocity = (0.0, 0.0)
    steps = (xy[1:] - xy[:-1]).norm(dim=1) / (t[1:] - t[:-1])
    jitter = float(steps.std(unbiased=False)) if len(steps) >= 2 else 0.0
    median_size = float(sizes.median())
    consistent = sum(1 for _, d in seen if d.colour == colour and d.shape == shape
                     and abs(d.size / median_size - 1) <= SIZE_TOLERANCE)
    rgb = tuple(torch.tensor([d.rgb for _, d in seen]).mean(0).tolist())
    return VideoReport(colour, shape, direction_of(velocity), velocity, len(seen) / frames, consistent / frames,
                       jitter, median_size, float(sizes.std(unbiased=False)) / median_size,
                       tuple(xy[0].tolist()), rgb)


def report_videos(videos: torch.Tensor) -> list[VideoReport]:
    """:func:`video_report` of every video of ``videos (B, F, 3, H, W)`` in [0, 1]."""
    detections = detect(videos.flatten(0, 1))
    frames = videos.shape[1]
    return [video_report(detections[i * frames:(i + 1) * frames]) for i in range(videos.shape[0])]


# ----------------------------------------------------------------------------------------------
# Over a set of videos
# ----------------------------------------------------------------------------------------------
def caption_scores(reports: list[VideoReport], captions: list[data.Caption | str]) -> dict[str, float]:
    """Fractions of videos whose colour, shape, direction (and all three: ``caption``) match their caption."""
    parsed = [c if isinstance(c, data.Caption) else data.parse_caption(c) for c in captions]
    if len(parsed) != len(reports):
        raise ValueError(f"captions: expected one per video ({len(reports)}), got {len(parsed)}")
    hits = {"colour": 0, "shape": 0, "direction": 0, "caption": 0}
    for report, caption in zip(reports, parsed):
        colour, shape = report.colour == caption.colour, report.shape == caption.shape
        direction = report.direction == caption.direction
        hits["colour"] += colour
        hits["shape"] += shape
        hits["direction"] += direction
        hits["caption"] += colour and shape and direction
    return {key: value / len(reports) for key, value in hits.items()}


CHANCE = {"colour": 1 / len(data.COLOURS), "shape": 1 / len(data.SHAPES), "direction": 1 / len(data.DIRECTIONS),
          "caption": 1 / (len(data.COLOURS) * len(data.SHAPES) * len(data.DIRECTIONS))}


def consistency_scores(reports: list[VideoReport]) -> dict[str, float]:
    """Means over videos: fraction of consistent frames, step-length jitter (pixels; videos with
    fewer than two shapes count as the frame's size) and detected frames."""
    def mean(values):
        return float(sum(values) / len(values))

    jitter = [r.jitter if not math.isnan(r.jitter) else float(data.SIZE) for r in reports]
    return {"consistency": mean([r.consistency for r in reports]), "jitter": mean(jitter),
            "detected": mean([r.detected for r in reports])}


# Per-clip track features and the unit each is measured in for the Frechet distance: a fixed
# scale (not the real set's spread, which is zero for size spread or detection on real clips and
# would make any difference there infinite), so distances compare across experiments.
FEATURES = ("red", "green", "blue", "size", "x0", "y0", "vx", "vy", "jitter", "size_spread", "detected")
FEATURE_UNITS = torch.tensor([0.1, 0.1, 0.1, 1.0, 4.0, 4.0, 0.5, 0.5, 0.25, 0.1, 0.1], dtype=torch.float64)


def track_features(reports: list[VideoReport]) -> torch.Tensor:
    """Per-clip features ``(N, len(FEATURES))`` of the tracks (float64); a video without any shape
    gets black, zero size, the frame's corner, no motion and the frame's size as jitter."""
    rows = []
    for r in reports:
        if r.detected == 0:
            rows.append([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(data.SIZE), 0.0, 0.0])
            continue
        jitter = 0.0 if math.isnan(r.jitter) else r.jitter
        rows.append([*r.rgb, r.size, *r.start, *r.velocity, jitter, r.size_spread, r.detected])
    return torch.tensor(rows, dtype=torch.float64)


def frechet_distance(real: torch.Tensor, generated: torch.Tensor, units: torch.Tensor = FEATURE_UNITS) -> float:
    """Frechet distance of Gaussians fitted to two feature sets ``(N, D)`` measured in ``units``:
    ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)``."""
    if real.shape[0] < 2 or generated.shape[0] < 2:
        raise ValueError(f"frechet_distance: needs at least 2 clips per set, got {real.shape[0]} and {generated.shape[0]}")
    real, generated = real.double() / units, generated.double() / units
    mu_r, mu_g = real.mean(0), generated.mean(0)
    cov_r, cov_g = torch.cov(real.T), torch.cov(generated.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_r)
    root_r = eigenvectors @ torch.diag(eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp_min(0).sqrt().sum()
    return float((mu_r - mu_g).square().sum() + torch.trace(cov_r) + torch.trace(cov_g) - 2 * cross)


def pixel_clip_scores(videos: torch.Tensor) -> dict[str, float]:
    """``vidgen eval``'s frame consistency (mean over videos) and diversity (over all videos),
    x100, with each frame's flattened pixels as its embedding."""
    from ..eval import diversity, video_scores

    embeddings = [video.flatten(1).double() for video in videos]
    consistency = [video_scores(e, None).frame_consistency for e in embeddings]
    return {"pixel_frame_consistency": float(sum(consistency) / len(consistency)),
            "pixel_diversity": diversity(embeddings)}


def score_videos(videos: torch.Tensor, captions: list[data.Caption | str],
                 real_features: torch.Tensor | None = None) -> dict[str, float]:
    """Every score of ``videos (B, F, 3, H, W)`` in [0, 1] against their captions; with the
    features of a real set, the Frechet distance to it."""
    reports = report_videos(videos)
    scores = {**caption_scores(reports, captions), **consistency_scores(reports), **pixel_clip_scores(videos)}
    if real_features is not None:
        scores["frechet"] = frechet_distance(real_features, track_features(reports))
    return scores
