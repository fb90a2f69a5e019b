"""vidgen's video models: the Tune-A-Video inflated UNet."""
from .video_unet import FramePooledGroupNorm, KeyReport, VideoTransformerBlock, VideoUNet


def inflate(unet2d, *, attention: str = "sparse_causal") -> VideoUNet:
    """Tune-A-Video's video UNet from a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x style).

    ``attention`` is the self-attention across frames: ``"sparse_causal"`` (Tune-A-Video: frame f
    attends to frames 0 and f-1) or ``"first_frame"`` (LAMP). The 2-D weights are shared with
    ``unet2d``; every ``_temp.`` layer is new (zero-initialised output weight). The result runs
    vidgen's kernels for frame and temporal attention (see :meth:`VideoUNet.use_vidgen_ops`).
    """
    from .attention import FRAME_MODES

    if attention not in FRAME_MODES:
        raise ValueError(f"attention: expected one of {', '.join(map(repr, FRAME_MODES))}, got {attention!r}")
    return VideoUNet.from_unet2d(unet2d, frame_attention=attention)


__all__ = ["FramePooledGroupNorm", "KeyReport", "VideoTransformerBlock", "VideoUNet", "inflate"]
