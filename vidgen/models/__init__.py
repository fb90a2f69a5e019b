"""Deprecated path: the video UNet moved to :mod:`vidgen.integration.video_unet` (removed in vidgen
0.3); ``vidgen.inflate`` and ``vidgen.VideoUNet`` are the public names."""
from .._deprecated import moved

__getattr__, __dir__ = moved(__name__, "vidgen.integration.video_unet")
