"""Moving shapes: vidgen's own tiny text-to-video model, its data and its scores.

* :mod:`~vidgen.shapes.data`: procedural clips of one coloured shape moving on black, captioned by a
  small grammar ("a red square moves left"), with exact ground truth per frame;
* :mod:`~vidgen.shapes.scores`: caption accuracy, temporal consistency and a Frechet distance,
  read back from the pixels by a simple detector;
* :mod:`~vidgen.shapes.models`, :mod:`~vidgen.shapes.training`: the diffusers components and how
  they are trained (VAE, text-to-image prior, video models made from it);
* :mod:`~vidgen.shapes.experiments`, :mod:`~vidgen.shapes.report`, :mod:`~vidgen.shapes.reproduce`:
  the experiments of docs/RESULTS.md (``make reproduce``), which also write the built-in model
  that ``vidgen sample`` uses without ``--model`` (``vidgen/shapes/model/``).
"""
from .data import COLOURS, DIRECTIONS, FRAMES, SHAPES, SIZE, VOCABULARY, Caption, ClipSpec, parse_caption, render, sample_specs
from .scores import caption_scores, consistency_scores, detect, frechet_distance, report_videos, score_videos

__all__ = ["COLOURS", "DIRECTIONS", "FRAMES", "SHAPES", "SIZE", "VOCABULARY", "Caption", "ClipSpec", "caption_scores",
           "consistency_scores", "detect", "frechet_distance", "parse_caption", "render", "report_videos",
           "sample_specs", "score_videos"]
