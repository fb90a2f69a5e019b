"""Deprecated path: the video UNet's processors moved to :mod:`vidgen.integration.processors`, and its
frame modes to ``vidgen.integration.video_unet.INFLATION_MODES`` (removed in vidgen 0.3)."""
from .._deprecated import moved

__getattr__, __dir__ = moved(__name__, "vidgen.integration.processors", "vidgen.integration.video_unet",
                             renamed={"FRAME_MODES": "INFLATION_MODES", "key_frame_indices": "key_frames_for"})
