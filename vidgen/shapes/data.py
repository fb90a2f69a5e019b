"""Moving shapes: procedural captioned clips with exact ground truth, the data of vidgen's own tiny model.

A clip is one filled shape (square, circle or upright triangle) of one colour on a black
background, moving in a straight line for ``FRAMES`` frames of ``SIZE`` x ``SIZE`` pixels. Its
caption comes from a small grammar, ``"a <colour> <shape> moves <direction>"`` (``"a <colour>
<shape>"`` for a still image). The caption's direction is the main axis of the motion; the shape
also drifts slowly along the other axis and bounces off the walls there, so the caption holds on
every frame while no two clips move alike. Edges are anti-aliased (coverage by supersampling),
so sub-pixel motion is visible and the ground truth is exact to the pixel grid.

Everything is a pure function of its seed: :func:`sample_specs` draws clip parameters with a
``torch.Generator``, :func:`render` draws the frames from them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..vocabulary import vocabulary_problem

SIZE = 32     # pixels per side
FRAMES = 8
SUPERSAMPLE = 8  # coverage samples per pixel and axis: edges on a 1/8-pixel grid

COLOURS = {  # RGB in [0, 1], far apart in every channel pair
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # image axes: y down
TEMPLATE = "a {colour} {shape} moves {direction}"
VOCABULARY = tuple(sorted({"a", "moves", *COLOURS, *SHAPES, *DIRECTIONS}))


@dataclass(frozen=True)
class Caption:
    """What a caption says; ``direction`` is None for a still image's caption."""

    colour: str
    shape: str
    direction: str | None = None

    def __str__(self) -> str:
        text = f"a {self.colour} {self.shape}"
        return text if self.direction is None else f"{text} moves {self.direction}"


def parse_caption(text: str, name: str = "caption") -> Caption:
    """The :class:`Caption` of a grammar sentence; a ValueError naming ``name`` otherwise.

    Unknown words are refused with the vocabulary in the message; known words in the wrong
    order with the grammar's template."""
    problem = vocabulary_problem(VOCABULARY, text, name)
    if problem:
        raise ValueError(problem)
    words = text.lower().split()
    colours, shapes, directions = "|".join(COLOURS), "|".join(SHAPES), "|".join(DIRECTIONS)
    match = re.fullmatch(rf"a ({colours}) ({shapes})(?: moves ({directions}))?", " ".join(words))
    if match is None:
        raise ValueError(f"{name}: {text!r} is not a sentence of the grammar {TEMPLATE!r} "
                         f"(or 'a <colour> <shape>' for a still image)")
    return Caption(*match.groups())


# ----------------------------------------------------------------------------------------------
# Clip parameters
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Motion:
    """How clips move and how big their shapes are: ranges the sampler draws from uniformly."""

    size: tuple[float, float] = (6.0, 10.0)     # side of the square / diameter / triangle base and height, pixels
    speed: tuple[float, float] = (1.5, 2.5)     # pixels per frame along the caption's direction
    drift: tuple[float, float] = (-0.6, 0.6)    # pixels per frame across it (bounces off the walls)
    margin: float = 1.0                         # pixels kept free between the shape and the border


DEFAULT_MOTION = Motion()


@dataclass(frozen=True)
class ClipSpec:
    """One clip: its caption and the shape's state at frame 0 (centre of its bounding box)."""

    caption: Caption
    size: float
    x: float
    y: float
    vx: float
    vy: float
    margin: float = 1.0


def _uniform(generator: torch.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def sample_spec(caption: Caption, generator: torch.Generator, motion: Motion = DEFAULT_MOTION,
                frames: int = FRAMES) -> ClipSpec:
    """Clip parameters for ``caption``: a size, speed and drift from ``motion``, and a start point
    from which the main-axis motion stays inside the frame for ``frames`` frames."""
    size = _uniform(generator, motion.size)
    speed = _uniform(generator, motion.speed) if caption.direction else 0.0
    drift = _uniform(generator, motion.drift) if caption.direction else 0.0
    low, high = size / 2 + motion.margin, SIZE - size / 2 - motion.margin
    travel = speed * (frames - 1)
    if travel > high - low:
        raise ValueError(f"motion: a {size:.1f}-pixel shape at {speed:.2f} pixels per frame leaves the "
                         f"{SIZE}-pixel frame within {frames} frames")
    dx, dy = DIRECTIONS[caption.direction] if caption.direction else (1.0, 0.0)
    main = _uniform(generator, (low, high - travel))
    if dx + dy < 0:  # moving towards smaller coordinates: start from the far side
        main = low + high - main
    across = _uniform(generator, (low, high))
    horizontal = dx != 0
    x, y = (main, across) if horizontal else (across, main)
    vx, vy = (dx * speed, drift) if horizontal else (drift, dy * speed)
    return ClipSpec(caption, size, x, y, vx, vy, motion.margin)


def random_caption(generator: torch.Generator, *, colours=tuple(COLOURS), shapes=SHAPES,
                   directions=tuple(DIRECTIONS)) -> Caption:
    def pick(options):
        return options[int(torch.randint(len(options), (), generator=generator))]

    return Caption(pick(tuple(colours)), pick(tuple(shapes)), pick(tuple(directions)) if directions else None)


def sample_specs(count: int, seed: int, *, motion: Motion = DEFAULT_MOTION, frames: int = FRAMES,
                 captions: list[Caption] | None = None, **caption_choices) -> list[ClipSpec]:
    """``count`` clip specs from ``seed``: random captions (restricted by ``colours=``, ``shapes=``,
    ``directions=``; ``directions=()`` gives still images), or the given ``captions`` cycled."""
    generator = torch.Generator().manual_seed(seed)
    specs = []
    for i in range(count):
        caption = captions[i % len(captions)] if captions else random_caption(generator, **caption_choices)
        specs.append(sample_spec(caption, generator, motion, frames))
    return specs


# ----------------------------------------------------------------------------------------------
# Ground truth and rendering
# ----------------------------------------------------------------------------------------------
def _fold(position: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Positions of a point moving freely, reflected back into [low, high] at each wall (bounces)."""
    span = high - low
    phase = torch.remainder(position - low, 2 * span)
    return low + torch.where(phase > span, 2 * span - phase, phase)


def trajectory(spec: ClipSpec, frames: int = FRAMES) -> torch.Tensor:
    """Centres ``(frames, 2)`` (x, y) of the shape's bounding box, in pixels (float64)."""
    t = torch.arange(frames, dtype=torch.float64)
    low, high = spec.size / 2 + spec.margin, SIZE - spec.size / 2 - spec.margin
    x = _fold(spec.x + spec.vx * t, low, high)
    y = _fold(spec.y + spec.vy * t, low, high)
    return torch.stack([x, y], dim=1)


@dataclass(frozen=True)
class FrameTruth:
    shape: str
    colour: str
    x: float
    y: float
    size: float


def ground_truth(spec: ClipSpec, frames: int = FRAMES) -> list[FrameTruth]:
    """Per frame: the shape, its colour, the centre of its bounding box and its size."""
    return [FrameTruth(spec.caption.shape, spec.caption.colour, float(x), float(y), spec.size)
            for x, y in trajectory(spec, frames).tolist()]


def coverage(shape: str, centres: torch.Tensor, sizes: torch.Tensor, size: int = SIZE,
             supersample: int = SUPERSAMPLE, chunk: int = 128) -> torch.Tensor:
    """Fraction of each pixel covered by the shape, ``(N, size, size)`` in [0, 1] (float32).

    ``centres (N, 2)`` are bounding-box centres (x, y) in pixels (pixel i spans [i, i + 1)),
    ``sizes (N,)`` the side (square), diameter (circle) or base and height (triangle, apex up).
    Coverage is counted on ``supersample`` x ``supersample`` points per pixel, ``chunk`` shapes at a time."""
    if shape not in SHAPES:
        raise ValueError(f"shape: expected one of {', '.join(SHAPES)}, got {shape!r}")
    steps = (torch.arange(size * supersample, dtype=torch.float32) + 0.5) / supersample
    parts = []
    for part_centres, part_sizes in zip(centres.float().split(chunk), sizes.float().split(chunk)):
        cx, cy = (part_centres[:, i].view(-1, 1, 1) for i in (0, 1))
        half = part_sizes.view(-1, 1, 1) / 2
        dx, dy = steps.view(1, 1, -1) - cx, steps.view(1, -1, 1) - cy
        if shape == "square":
            inside = (dx.abs() <= half) & (dy.abs() <= half)
        elif shape == "circle":
            inside = dx ** 2 + dy ** 2 <= half ** 2
        else:  # apex at the top of the box, base at its bottom: half-width grows from 0 to half
            inside = (dy >= -half) & (dy <= half) & (dx.abs() <= (dy + half) / 2)
        blocks = inside.float().unflatten(1, (size, supersample)).unflatten(3, (size, supersample))
        parts.append(blocks.mean(dim=(2, 4)))
    return torch.cat(parts) if parts else torch.zeros(0, size, size)


def render(specs: list[ClipSpec], frames: int = FRAMES) -> torch.Tensor:
    """Videos ``(N, frames, 3, SIZE, SIZE)`` in [0, 1] (float32) of the clip specs."""
    video = torch.zeros(len(specs), frames, 3, SIZE, SIZE)
    for shape in SHAPES:
        rows = [i for i, s in enumerate(specs) if s.caption.shape == shape]
        if not rows:
            continue
        centres = torch.cat([trajectory(specs[i], frames) for i in rows])
        sizes = torch.tensor([specs[i].size for i in rows], dtype=torch.float64).repeat_interleave(frames)
        alpha = coverage(shape, centres, sizes).view(len(rows), frames, 1, SIZE, SIZE)
        colours = torch.tensor([COLOURS[specs[i].caption.colour] for i in rows]).view(len(rows), 1, 3, 1, 1)
        video[rows] = alpha * colours
    return video


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels to the [-1, 1] a VAE takes."""
    return video * 2 - 1
